"""The machinery every stage runs under: the registry (stage records and the chain order), fingerprints and unit
states (computed once per chain run), the runner (pending units, one unit, a shard, summaries) and `run_chain`.

Executors (`srpipe.cluster`) call this surface only; it imports no stage code (and so no torch) until a unit runs.
"""

from srpipe.chain.driver import Executor, labelled_stages, plan_run, run_chain
from srpipe.chain.fingerprint import ChainState, UnitState, fingerprint
from srpipe.chain.registry import ALL, CHAIN, STAGES, Stage, check_stage, downstream_of, stage_units
from srpipe.chain.runner import Pending, StageSummary, pending_units, record_outcome, run_shard, run_unit

__all__ = [
    "ALL",
    "CHAIN",
    "STAGES",
    "ChainState",
    "Executor",
    "Pending",
    "Stage",
    "StageSummary",
    "UnitState",
    "check_stage",
    "downstream_of",
    "fingerprint",
    "labelled_stages",
    "pending_units",
    "plan_run",
    "record_outcome",
    "run_chain",
    "run_shard",
    "run_unit",
    "stage_units",
]
