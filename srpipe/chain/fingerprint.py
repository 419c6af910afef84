"""Fingerprints and unit states: what a unit reads now, whether its recorded run was on the same inputs.

A unit's fingerprint hashes the config keys its stage reads, the input files it names (by content) and the versions
of the upstream units it reads (per tile, or every tile for a whole-run stage). A unit is done only while its recorded
fingerprint equals today's, so a changed setting redoes exactly the units it reaches and everything downstream.
One `ChainState` per chain run reads each marker folder once, hashes each input file once and computes each unit's
state once, for every stage that asks (the stage itself, its downstream stages' upstream checks, status).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from srpipe import state
from srpipe.chain.registry import ALL, STAGES, Stage, downstream_of, stage_units
from srpipe.config import Config, config_to_dict


def digest(value: Any) -> str:
    """16 hex digits of `value`'s JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _config_tree(cfg: Config) -> dict[str, Any]:
    return config_to_dict(cfg)


def config_values(cfg: Config, keys: tuple[str, ...]) -> dict[str, Any]:
    """{dotted key: value} of every key `keys` names (a section expands to its keys)."""
    tree, out = _config_tree(cfg), {}
    for key in keys:
        value: Any = tree
        for part in key.split("."):
            value = value[part]
        items = value.items() if isinstance(value, dict) else [("", value)]
        out |= {f"{key}.{k}" if k else key: v for k, v in items}
    return out


def fingerprint(inputs: dict[str, Any]) -> str:
    """16 hex digits identifying `inputs`."""
    return digest(inputs)


def stale_reason(recorded: dict[str, Any], now: dict[str, Any]) -> str:
    """Which input changed between a unit's recorded inputs and today's, in words."""
    reasons = []
    old_config, new_config = recorded.get("config", {}), now["config"]
    for key in sorted(set(old_config) | set(new_config)):
        if old_config.get(key) != new_config.get(key):
            reasons.append(f"{key} {old_config.get(key)!r} -> {new_config.get(key)!r}")
    reasons += [f"file {p} changed" for p in now["files"] if recorded.get("files", {}).get(p) != now["files"][p]]
    old_up = recorded.get("upstream", {})
    reasons += [f"{name} was redone" for name, v in now["upstream"].items() if old_up.get(name) != v]
    return "; ".join(reasons) or "recorded before fingerprints"


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    """{dotted key: default value} of every config key, as a marker records it (JSON: tuples as lists)."""
    return json.loads(json.dumps(config_values(Config(), tuple(_config_tree(Config()))), default=str))


def only_new_defaults(recorded: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    """Whether today's inputs differ from the recorded ones only by config keys the record lacks, each at its
    default: keys a newer srpipe added, which cannot have changed the work (an upgrade redoes nothing)."""
    if not recorded:
        return False
    old, new = (json.loads(json.dumps(v, default=str)) for v in (recorded, now))  # as recorded: tuples -> lists
    if old.get("files") != new["files"] or old.get("upstream") != new["upstream"]:
        return False
    old_config, new_config = old.get("config", {}), new["config"]
    if any(k not in new_config or old_config[k] != new_config[k] for k in old_config):
        return False
    defaults = _defaults()
    return all(k in defaults and new_config[k] == defaults[k] for k in set(new_config) - set(old_config))


@dataclass
class UnitState:
    """One unit: `status` done | stale | failed | pending, and why (the changed input, or the error)."""

    status: str
    reason: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)


class ChainState:
    """The recorded versions and today's states of a run's units, each read or computed at most once.

    Marker folders are listed once per stage (never a file per tile), input files hashed once per (path, inode,
    mtime), unit states and upstream problems memoised; `forget(stage)` drops what a run of `stage` changes.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._records: dict[str, dict[str, dict]] = {}
        self._failures: dict[str, dict[str, dict]] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._states: dict[tuple[str, str], UnitState] = {}
        self._problems: dict[tuple[str, str], str] = {}
        self._digests: dict[tuple[str, tuple[str, ...] | None], str] = {}
        self._config: dict[tuple[str, ...], dict[str, Any]] = {}
        self._picks: dict[tuple[str, str, str], list[str]] = {}
        self._files: dict[str, list[str]] = {}

    def records(self, stage: str) -> dict[str, dict]:
        """{unit: done record} of every finished unit of `stage` (one folder listing)."""
        if stage not in self._records:
            self._records[stage] = state.done_records(self.cfg.run_path, stage)
        return self._records[stage]

    def record(self, stage: str, unit: str) -> dict | None:
        """The done record of one unit (None when it is not done)."""
        return self.records(stage).get(unit)

    def failure(self, stage: str, unit: str) -> dict:
        """The .failed record of one unit ({} when it has none)."""
        if stage not in self._failures:
            self._failures[stage] = state.failure_records(self.cfg.run_path, stage)
        return self._failures[stage].get(unit, {})

    def units(self, stage: Stage, tiles: list[str] | None = None) -> list[str]:
        """The units of `stage` (see `registry.stage_units`), its own from infer's records read here."""
        return stage_units(self.cfg, stage, tiles, self.records)

    def forget(self, stage: str) -> None:
        """Drop what a run of `stage` may have changed: its records, failures, and every state and problem."""
        self._records.pop(stage, None)
        self._failures.pop(stage, None)
        changed = {stage} | downstream_of(stage)
        self._states = {k: v for k, v in self._states.items() if k[0] not in changed}
        self._problems.clear()
        self._digests = {k: v for k, v in self._digests.items() if k[0] not in changed}
        self._picks = {k: v for k, v in self._picks.items() if k[2] not in changed}

    def file_hash(self, path: str) -> str | None:
        """SHA-256 of an input file's content (None when missing), once per version of the file."""
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return None
        key = (str(path), info.st_ino, info.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = state.file_sha256(path)
        return self._hashes[key]

    def read_units(self, stage: Stage, unit: str, upstream: str) -> list[str] | None:
        """The units of stage `upstream` that `unit` of `stage` reads: one ([ALL], or the same tile), the finished
        ones `stage.reads_units` picks, or None for every finished one (a whole-run stage after a mapped one)."""
        other = STAGES[upstream]
        if not other.mapped:
            return [ALL]
        if stage.per_tile and other.per_tile:
            return [unit]
        if stage.reads_units and stage.mapped:
            key = (stage.name, unit, upstream)
            if key not in self._picks:
                self._picks[key] = stage.picks(unit, self.records(upstream))
            return self._picks[key]
        return None

    def _versions_digest(self, upstream: str, units: list[str] | None) -> str:
        """Digest of the versions of `units` of `upstream` (None: every finished unit), memoised."""
        key = (upstream, None if units is None else tuple(units))
        if key not in self._digests:
            records = self.records(upstream)
            names = records if units is None else units
            self._digests[key] = digest({u: (records.get(u) or {}).get("version") for u in names})
        return self._digests[key]

    def upstream(self, stage: Stage, unit: str) -> dict[str, Any]:
        """{upstream stage: the version of the unit(s) this unit reads}; None where that unit is not done."""
        out = {}
        for name in stage.after:
            units = self.read_units(stage, unit, name)
            if units is not None and (units == [ALL] or (len(units) == 1 and stage.per_tile)):
                out[name] = (self.record(name, units[0]) or {}).get("version")
            else:
                out[name] = self._versions_digest(name, units)
        return out

    def inputs(self, stage: Stage, unit: str) -> dict[str, Any]:
        """What `unit` of `stage` reads now: config values, input files by content hash, upstream versions."""
        if stage.name not in self._files:  # the same files for every unit of the stage
            self._files[stage.name] = stage.files(self.cfg) if stage.files else []
        paths = self._files[stage.name]
        if stage.reads not in self._config:  # the same for every unit of the stage
            self._config[stage.reads] = config_values(self.cfg, stage.reads)
        return {
            "config": self._config[stage.reads],
            "files": {path: self.file_hash(path) for path in paths},
            "upstream": self.upstream(stage, unit),
        }

    def unit_state(self, stage: Stage, unit: str) -> UnitState:
        """Whether `unit` of `stage` is done on today's inputs, stale (and why), failed or pending (memoised)."""
        key = (stage.name, unit)
        if key not in self._states:
            self._states[key] = self._compute_state(stage, unit)
        return self._states[key]

    def _compute_state(self, stage: Stage, unit: str) -> UnitState:
        now = self.inputs(stage, unit)
        record = self.record(stage.name, unit)
        if record is not None:
            if record.get("inputs") == fingerprint(now) or only_new_defaults(record.get("inputs_detail"), now):
                return UnitState("done", inputs=now)
            return UnitState("stale", stale_reason(record.get("inputs_detail", {}), now), now)
        failure = self.failure(stage.name, unit)
        if failure:
            return UnitState("failed", failure["error"], now)
        return UnitState("pending", inputs=now)

    def upstream_problem(self, stage: Stage, unit: str) -> str:
        """Why `unit` cannot run on current inputs ('' when it can): a unit it reads, or one further up, is stale."""
        for name in stage.after:
            upstream = STAGES[name]
            others = self.read_units(stage, unit, name)
            for other in self.records(name) if others is None else others:
                if self.record(name, other) is None:
                    continue  # missing upstream work fails inside the stage with its own clear error
                if (name, other) not in self._problems:
                    self._problems[name, other] = self._problem_of(upstream, other)
                if self._problems[name, other]:
                    return self._problems[name, other]
        return ""

    def _problem_of(self, upstream: Stage, unit: str) -> str:
        """'' when `unit` of `upstream` is current and so is everything it reads; else why not."""
        current = self.unit_state(upstream, unit)
        if current.status != "stale":
            return self.upstream_problem(upstream, unit)
        where = f" of {'tile' if upstream.per_tile else 'unit'} {unit}" if upstream.mapped else ""
        return f"{upstream.name}{where} is stale ({current.reason}); run `srpipe {upstream.name}` first"
