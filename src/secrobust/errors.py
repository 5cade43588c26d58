"""Errors the protocol raises; each names what was wrong so a caller can abort one round cleanly."""


class ProtocolError(Exception):
    """Base class: the round cannot go on as the protocol requires."""


class MalformedMessage(ProtocolError, ValueError):
    """Bytes that do not decode to a well-formed message (bad magic, header, dtype, size)."""


class UnexpectedMessage(ProtocolError):
    """A well-formed message that does not fit: wrong round, phase, sender, kind, or a replay."""


class UnknownWorker(UnexpectedMessage):
    """A share from a worker id the servers do not expect this round."""


class DuplicateWorker(UnexpectedMessage):
    """A second share from the same worker in the same round."""


class TripleReuseError(ProtocolError):
    """A Beaver triple offered or requested a second time; reuse would leak X - X'."""


class RoundAborted(ProtocolError):
    """The round stopped cleanly (too few participants for the rule, a party gone); nothing is revealed."""
