"""A LivePerson UMS (consumer Messaging Window API) simulator on a real port.

    async with Simulator(account="71234567", seed=1) as sim:
        token = sim.issue_token()
        ...

See `core.Simulator` for the API, `faults.Faults` for fault injection and `journal` for
what tests can inspect afterwards.
"""

from recorder.simulator.core import Simulator
from recorder.simulator.faults import VARIANT_KINDS, Faults
from recorder.simulator.journal import CloseRecord, ReceivedFrame, RestRequest, SentFrame
from recorder.simulator.model import SimulatorError
from recorder.simulator.tokens import Identity, TokenError

__all__ = [
    "VARIANT_KINDS",
    "CloseRecord",
    "Faults",
    "Identity",
    "ReceivedFrame",
    "RestRequest",
    "SentFrame",
    "Simulator",
    "SimulatorError",
    "TokenError",
]
