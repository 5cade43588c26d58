"""Circuits built from the gates: the input validity check, clipping, selection and coordinate-wise rules on shares."""
