"""The README's main job, run from a source checkout with `python -m demo`; not in the wheel.

`federated.py`: a consortium of three hospital boxes on this machine, launched by
`consortium.py` (SuperLink, SuperNodes, `flwr run` of this checkout's Flower app).
`single_box.py` (`--single-box`): one box trains, evaluates and annotates.
"""
