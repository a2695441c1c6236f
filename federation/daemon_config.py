"""The nightly daemon's typed config (`daemon.toml` on a hospital box), validated on load."""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from appliance.net import is_loopback
from appliance.registry import KEEP_VERSIONS, check_keep
from appliance.tomlconfig import check_keys, read_toml, table
from federation.config import FederationConfig

# The node-config keys the ClientApp reads (from `context.node_config`).
NODE_KEYS = (
    *("hospital", "notes", "heldout", "note-store", "heldout-fraction", "min-new-notes"),
    *("state-dir", "registry", "journal", "tolerance", "require-dp", "epsilon-budget"),
)
# The privacy ledger the ClientApp keeps in the node's state dir (`federation.privacy`).
LEDGER_FILE = "privacy-ledger.json"


@dataclass(frozen=True)
class TimeWindow:
    """A daily local-time window such as 01:00-05:00; it may wrap midnight (22:00-04:00)."""

    start: dt.time
    end: dt.time

    @classmethod
    def parse(cls, text: str) -> TimeWindow:
        try:
            first, second = text.split("-")
            start, end = dt.time.fromisoformat(first.strip()), dt.time.fromisoformat(second.strip())
        except ValueError as err:
            raise ValueError(f"window {text!r}: use HH:MM-HH:MM, e.g. 01:00-05:00") from err
        if start == end:
            raise ValueError(f"window {text!r} is empty: start and end are equal")
        return cls(start, end)

    def contains(self, moment: dt.datetime) -> bool:
        now = moment.time()
        if self.start < self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def seconds_until_change(self, moment: dt.datetime) -> float:
        """Seconds from `moment` to the next opening or closing of the window."""
        edge = self.end if self.contains(moment) else self.start
        target = moment.replace(hour=edge.hour, minute=edge.minute, second=0, microsecond=0)
        if target <= moment:
            target += dt.timedelta(days=1)
        return (target - moment).total_seconds()

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class DaemonConfig:
    """One hospital's federation daemon. Paths are on the hospital's box; notes never leave it."""

    hospital: str = field(
        metadata={"help": "this hospital's name in the consortium (letters, digits, '-' or '_')"}
    )
    superlink: str = field(metadata={"help": "the consortium SuperLink's Fleet API, host:port"})
    state_dir: Path = field(
        metadata={"help": "caches, privacy ledger, compression residuals, journal"}
    )
    registry: Path = field(metadata={"help": "the model registry serving follows"})
    note_store: Path | None = field(
        default=None,
        metadata={
            "help": "the clinicians' annotated-notes store serving's curation service writes: "
            "each round trains on a snapshot of it (set this, or notes and heldout)"
        },
    )
    heldout_fraction: float = field(
        default=0.2,
        metadata={
            "help": "with note_store: the share of note ids held out for promotion, chosen by "
            "a keyed hash of the id (a held-out note never trains), in (0, 1)"
        },
    )
    min_new_notes: int = field(
        default=1,
        metadata={
            "help": "with note_store: new or changed notes since the box's last round below "
            "which it sits a round out (and says so in its journal)"
        },
    )
    notes: Path | None = field(
        default=None,
        metadata={
            "help": "a file of annotated notes to train on instead of note_store (any format "
            "the core reads)"
        },
    )
    heldout: Path | None = field(
        default=None,
        metadata={"help": "with notes: held-out annotated notes promotion is decided on"},
    )
    window: str = field(
        default="01:00-05:00",
        metadata={
            "help": "daily local-time window the SuperNode runs in, HH:MM-HH:MM; may wrap midnight"
        },
    )
    tolerance: float = field(
        default=0.01,
        metadata={"help": "promote if candidate F1 >= current F1 - tolerance, in [0, 1]"},
    )
    require_dp: bool = field(
        default=True,
        metadata={
            "help": "train only in rounds that run DP-SGD: this hospital declines every round "
            "whose run config has dp = false, whatever the consortium sets (false: it also "
            "trains in rounds without DP)"
        },
    )
    epsilon_budget: float = field(
        default=8.0,
        metadata={
            "help": "the most epsilon (at the run's dp-delta) this hospital spends on one model "
            "lineage: the lower of this and the run config's dp-epsilon-budget holds"
        },
    )
    keep_versions: int = field(
        default=KEEP_VERSIONS,
        metadata={"help": "after a promotion keep current, previous and the N newest versions"},
    )
    serving_exports: Path | None = field(
        default=None,
        metadata={"help": "serving's <state_dir>/exports: ONNX exports of pruned versions go too"},
    )
    root_certificates: Path | None = field(
        default=None,
        metadata={"help": "CA of the SuperLink's TLS certificate (required unless insecure)"},
    )
    auth_private_key: Path | None = field(
        default=None, metadata={"help": "this SuperNode's private key (SuperNode authentication)"}
    )
    insecure: bool = field(
        default=False, metadata={"help": "plaintext to the SuperLink: only allowed on loopback"}
    )
    runtime_port: int = field(
        default=9094, metadata={"help": "the SuperNode's local ClientApp runtime API port"}
    )
    metrics_address: str = field(
        default="127.0.0.1", metadata={"help": "Prometheus exporter listen address"}
    )
    metrics_port: int = field(default=9310, metadata={"help": "Prometheus exporter port"})
    restart_backoff_s: float = field(
        default=5.0,
        metadata={
            "help": "first wait before restarting a SuperNode that exited (doubles each time)"
        },
    )
    max_backoff_s: float = field(
        default=300.0, metadata={"help": "longest wait between SuperNode restarts"}
    )
    poll_s: float = field(
        default=5.0,
        metadata={"help": "seconds between the daemon's checks of the window and the SuperNode"},
    )
    node_config: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "extra --node-config keys for the ClientApp, e.g. audit-dir, bases-dir; may "
            "not override the keys above"
        },
    )
    supernode_command: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "the command to supervise instead (default: flower-supernode next to this "
            "Python)"
        },
    )

    def __post_init__(self) -> None:
        for name in (
            "notes",
            "heldout",
            "state_dir",
            "registry",
            "root_certificates",
            "auth_private_key",
            "serving_exports",
            "note_store",
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value).expanduser())
        object.__setattr__(self, "supernode_command", tuple(self.supernode_command))
        self.time_window  # noqa: B018 - parse now so a bad window fails at load
        if not self.hospital.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"hospital {self.hospital!r}: use letters, digits, '-' or '_'")
        host, _, port = self.superlink.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"superlink {self.superlink!r}: use host:port")
        if self.insecure and not is_loopback(host):
            raise ValueError("insecure (plaintext) is only allowed to a loopback SuperLink")
        if not self.insecure and self.root_certificates is None:
            raise ValueError("root_certificates is required (TLS), or set insecure on loopback")
        if not 0.0 <= self.tolerance <= 1.0:
            raise ValueError(f"tolerance {self.tolerance}: must be within [0, 1]")
        check_keep(self.keep_versions, "keep_versions")
        if not self.epsilon_budget > 0:
            raise ValueError(f"epsilon_budget {self.epsilon_budget}: must be > 0")
        self._check_notes()
        clash = set(self.node_config) & set(NODE_KEYS)
        if clash:
            raise ValueError(f"node_config may not override {sorted(clash)}")

    def _check_notes(self) -> None:
        files = (self.notes is not None, self.heldout is not None)
        if self.note_store is None and files != (True, True):
            raise ValueError("set note_store, or notes and heldout (annotated files)")
        if self.note_store is not None and any(files):
            raise ValueError("note_store and notes/heldout: set one source of notes, not both")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction {self.heldout_fraction}: must be within (0, 1)")
        if self.min_new_notes < 0:
            raise ValueError(f"min_new_notes {self.min_new_notes}: must be at least 0")

    @property
    def time_window(self) -> TimeWindow:
        return TimeWindow.parse(self.window)

    @property
    def journal(self) -> Path:
        return self.state_dir / "journal.jsonl"

    @property
    def ledger(self) -> Path:
        return self.state_dir / LEDGER_FILE

    def node_config_arg(self) -> str:
        """The `--node-config` value: what the ClientApp needs to find this hospital's data."""
        return " ".join(f"{k}={toml_value(v)}" for k, v in self.node_values().items())

    def node_values(self) -> dict[str, Any]:
        """The node config the ClientApp gets, as a dict (`NODE_KEYS` and `node_config`)."""
        values: dict[str, Any] = {"hospital": self.hospital}
        if self.note_store is not None:
            values["note-store"] = str(self.note_store)
            values["heldout-fraction"] = self.heldout_fraction
            values["min-new-notes"] = self.min_new_notes
        else:
            values["notes"], values["heldout"] = str(self.notes), str(self.heldout)
        values |= {
            "state-dir": str(self.state_dir),
            "registry": str(self.registry),
            "journal": str(self.journal),
            "tolerance": self.tolerance,
            "require-dp": self.require_dp,
            "epsilon-budget": self.epsilon_budget,
            **self.node_config,
        }
        return values

    def command(self) -> list[str]:
        """The SuperNode command line the daemon supervises."""
        if self.supernode_command:
            return list(self.supernode_command)
        exe = Path(sys.executable).with_name("flower-supernode")
        cmd = [str(exe) if exe.exists() else shutil.which("flower-supernode") or str(exe)]
        cmd += ["--superlink", self.superlink, "--node-config", self.node_config_arg()]
        cmd += ["--port", str(self.runtime_port)]
        if self.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--root-certificates", str(self.root_certificates)]
        if self.auth_private_key is not None:
            cmd += ["--auth-supernode-private-key", str(self.auth_private_key)]
        return cmd


def load_daemon_config(path: str | Path, **overrides: Any) -> DaemonConfig:
    """Read `[daemon]` from a TOML file; errors name the file and the key."""
    source = Path(path)
    section = table(read_toml(source, "daemon config"), "daemon", str(source))
    section.update({k: v for k, v in overrides.items() if v is not None})
    check_keys(section, DaemonConfig, f"{source} [daemon]")
    try:
        return DaemonConfig(**section)
    except TypeError as err:
        raise ValueError(f"{source}: [daemon] {err}") from err
    except ValueError as err:
        raise ValueError(f"{source}: [daemon] {err}") from err


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def node_privacy(
    cfg: FederationConfig, node_config: Mapping[str, Any]
) -> tuple[FederationConfig, str | None]:
    """The run as this hospital's own policy allows it (its `node_config`): its `epsilon-budget`
    caps the run's dp-epsilon-budget, and with `require-dp` a run without DP-SGD is declined
    (the second value says why; None: the hospital trains)."""
    budget = float(node_config.get("epsilon-budget", cfg.dp_epsilon_budget))
    cfg = replace(cfg, dp_epsilon_budget=min(cfg.dp_epsilon_budget, budget))
    required = node_config.get("require-dp", False)
    if (required is True or str(required).lower() == "true") and not cfg.dp:
        return cfg, "this hospital trains only with DP-SGD (require_dp); the run has dp = false"
    return cfg, None
