"""A server (S0 or S1) as a network service: the protocol's ServerNode driven round by round.

The round thread runs the protocol steps in the in-process runner's order (``secrobust.api``),
calling the same ``ServerNode`` methods; this package only moves their messages, keeps time, and
decides when a round is over. Per round:

* ``open-round`` (operator) fixes the public RoundRequest and opens the share phase. The request names
  the triple this round uses and the triples to have ready for the next rounds; both servers update
  their offline pool with it (``secrobust.deploy.pool``), and S1 asks the dealer, one request at a
  time in the background, for every named triple the pool does not hold yet (offline: a request
  carries only n, d, the kind and the triple id): this round's own at once, the later rounds' once this
  round is over, so the dealer's work falls between rounds. A triple prefetched by an earlier round is
  usually delivered before its round opens. Each server installs its part of the round's triple first: S0's
  input shares *are* the triple's mask A0 (``protocol.server``), so S0 can hand out no key before it.
* Share phase. S0 hands out keys: worker ``worker:<i>`` (certificate CN) fetches ``share-key`` from S0
  (``Fetch``), once per round, and only its own: the key is chosen by the caller's certificate, never
  by a field of the request, so no other party (S1, the operator, another worker) can obtain it; S1
  with worker i's key would hold both shares of worker i's update. S0 accepts no message from a
  worker. The worker then uploads x_i - PRG(k_i) to S1 (``share-masked``; S1 receives ``UPLOAD_SLOTS``
  at a time). S1's intake closes when every expected worker's share is in or at the deadline; a share
  after that is refused (``out-of-phase``), so is a second one (``duplicate``) or one of the wrong size
  (``wrong-size``). S0's key handout closes when S1's participant list arrives.
* Steps 2-3 are pipelined with the share phase (``protocol.streaming``): as each share arrives S1 sends
  S0 that worker's row of E = Y1 - A1 (the plan's ``open_kind``: ``masked-open``, or
  ``validity-masked-open`` when only the check needs it, as for the mean), and both servers add the
  rows to their Gram shares in blocks. When the intake closes, S1 fixes the participants from the
  shares it holds (``ServerNode.agree``) and sends the list to S0 only (too few for the rule's f
  aborts the round with the rule's requirement); S0 must have been sent rows of exactly those workers.
* Input validity check (unless the request turns it off): right after the participant list the
  servers exchange fresh seed contributions for the check's projections (two-way, 16 bytes each: the
  shares are fixed by then) and project their input shares column chunk by column chunk while the
  last rows of E travel; once every row is in they run the check's comparison rounds
  (``validity-open``, one message each way per round). A worker whose shares do not reconstruct to a
  vector of norm at most B is rejected: out of the round, listed with its reason in the report
  (``rejected``) and logged (``worker-rejected``). S1 may also reject a worker whose opened view is
  impossible; it tells S0 with the weights.
* Then S0's view share to S1, S1's weights to S0, the aggregate shares to each other. Every message
  from the peer must be the next one of the protocol's sequence (rows of E are taken from the share
  phase until the comparisons, or the weights, begin; after the participant list only rows of listed
  workers, each once), or it is refused as ``out-of-phase`` (``duplicate``, ``wrong-size``).
* With ``reveal`` "weights" or "aggregate" (``rules.modes``) there is no view share and no weights
  message: the rule's circuit runs between the servers on their shares of the view (``rule-open``, one
  numbered message each way per round, as the check's comparisons; their count depends on the
  participants left, so each server takes at most a cap until its own circuit has ended, then exactly
  as many as it had), and ends with the public weights ("weights") or each server's share of them
  ("aggregate", summed with the dealer's weighted-sum correlation). The request's ``reveal`` is part of
  its digest, so servers opened with different modes abort before any share is used.
* Workers (and the operator) then fetch this server's aggregate share with the public weights (none
  with reveal="aggregate") (``FETCH_SLOTS`` replies encoded at a time).

What this server learns is what its ServerNode learns: S0 the triple's seeds (so its own input
shares), the masked openings E = Y1 - A1 (uniform), the weights and the aggregate; S1 the masked
vectors, the opened distances/norms, the weights and the aggregate; both also the openings of the
check's comparisons (uniformly random) and its accept bit per worker. With the rule on shares S1 opens
no distances or norms, the rule circuit's openings are uniformly random to both, and with "aggregate"
neither server learns the weights (the report and the fetched shares carry none). A round that cannot finish (peer
or dealer unreachable, peer timeout, too few workers) is marked aborted with its reason, the peer is
told, and the next round starts from a clean state.

The parts, each given what it needs when it is built (none imports the runtime, nor a part above it):

* ``runtime``: ``ServerRuntime``, the endpoint's handler; it wires the parts and answers the calls;
* ``driver``: the round thread, from the request confirmation to the archived outcome;
* ``s0``, ``s1``: each server's own steps (S0's key handout and column Gram share, S1's intake and rows
  of E), where the two servers differ;
* ``offline``: the triple pool, S1's requester thread, S0's A0 expanded ahead;
* ``slots``: the upload, row and fetch slots and the upload pace;
* ``sequence``: the order and size bounds of the peer's messages;
* ``link``: the other server as the steps see it (send, wait for the next message) and the phase clock;
* ``run``: a round's state and the rounds kept; ``sync``: the one Condition and ``wait_until``.
"""
