"""Train HighRes-Net + ShiftNet on the curated shards, on 1 process or N Horovod ranks; resumable; reads top to bottom.

The same code runs as one plain process (`srpipe train`), under `horovodrun`/`mpirun`, or `srun --mpi=pmix`:
hvd.init() sees the launcher's ranks (size 1 without one). Rank 0 alone writes checkpoints, history and plots.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from srpipe import state
from srpipe.augment import dihedral, self_ensemble
from srpipe.config import Config, ModelConfig, config_to_dict
from srpipe.curate.dataset import ShardDataset, shard_paths
from srpipe.curate.normalise import BandScale
from srpipe.curate.reduce import load_stats, scales
from srpipe.delineation import load_delineation
from srpipe.errors import StageError
from srpipe.losses import cpsnr, sr_losses
from srpipe.models import HighResNet, build_model
from srpipe.models.highresnet import bicubic, masked_median
from srpipe.models.shiftnet import ShiftNet


def model_dir(cfg: Config) -> Path:
    """Folder of the configured model in the run directory."""
    return cfg.run_path / "models" / cfg.train.name


def psnr_per_sample(sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of values in [0, 1] over clear label pixels."""
    m = mask[:, None].to(sr.dtype).expand_as(sr)
    mse = ((sr.clamp(0, 1) - hr) ** 2 * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


class Ranks:
    """The Horovod world, or a world of one when Horovod is missing: rank, size, and the few collectives used."""

    def __init__(self) -> None:
        try:
            import horovod.torch as hvd
        except ImportError as exc:  # a plain install without the patched Horovod still trains, on one process
            print(f"train: horovod not importable ({exc}); training in a single process")
            self.hvd, self.rank, self.size, self.local_rank = None, 0, 1, 0
            return
        hvd.init()
        self.hvd, self.rank, self.size, self.local_rank = hvd, hvd.rank(), hvd.size(), hvd.local_rank()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks of a float64 CPU tensor."""
        if self.size == 1:
            return values
        return self.hvd.allreduce(values, op=self.hvd.Sum)

    def average(self, row: dict[str, float]) -> dict[str, float]:
        """Mean over ranks of each value of `row`."""
        summed = self.sum(torch.tensor(list(row.values()), dtype=torch.float64)) / self.size
        return dict(zip(row, summed.tolist(), strict=True))

    def lead_value(self, value: float) -> float:
        """Rank 0's `value` on every rank (e.g. its clock, so that all ranks share one time budget and lr)."""
        return self.sum(torch.tensor([value if self.rank == 0 else 0.0], dtype=torch.float64)).item()


@torch.no_grad()
def validate(model: HighResNet, loader: DataLoader, ranks: Ranks, device: torch.device, max_shift: int) -> dict:
    """Mean PSNR and cPSNR (registered: best integer shift, brightness-corrected) of SR and bicubic, over all ranks."""
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        sr = model(batch["lr"], batch["lr_mask"]).float()
        bic = bicubic(masked_median(batch["lr"], batch["lr_mask"]), model.scale)
        hr, mask = batch["hr"], batch["hr_mask"]
        scores = [psnr_per_sample(sr, hr, mask), cpsnr(sr, hr, mask, max_shift)]
        scores += [psnr_per_sample(bic, hr, mask), cpsnr(bic, hr, mask, max_shift)]
        sums += torch.tensor([s.sum().item() for s in scores] + [len(hr)], dtype=torch.float64)
    model.train()
    sums = ranks.sum(sums)
    names = ("val_psnr", "val_cpsnr", "val_bicubic_psnr", "val_bicubic_cpsnr")
    n = sums[4].item()
    return {k: (sums[i].item() / n if n else float("nan")) for i, k in enumerate(names)}


def _save(path: Path, payload: dict) -> None:
    with state.atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _write_history(folder: Path, history: list[dict]) -> None:
    state.write_json(folder / "history.json", history)
    fields = list(dict.fromkeys(k for row in history for k in row))
    with state.atomic_path(folder / "history.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


def plot_loss_curves(path: Path, history: list[dict]) -> None:
    """PNG: one panel per training loss term (log scale) and one with validation (c)PSNR of SR and bicubic."""
    terms = [k for k in history[0] if k.startswith("loss")]
    fig, axes = plt.subplots(1, len(terms) + 1, figsize=(3.2 * (len(terms) + 1), 3))
    epochs = [r["epoch"] for r in history]
    for ax, term in zip(axes, terms, strict=False):
        ax.plot(epochs, [r[term] for r in history])
        ax.set_yscale("log")
        ax.set_title(term)
        ax.set_xlabel("epoch")
    for key in ("val_cpsnr", "val_bicubic_cpsnr", "val_psnr", "val_bicubic_psnr"):
        axes[-1].plot(epochs, [r[key] for r in history], label=key[4:])
    axes[-1].set_title("validation (dB)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    with state.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def lr_factor(schedule: str, progress: float) -> float:
    """Learning-rate multiplier at `progress` in [0, 1] of training: 1 (constant), or cosine from 1 to 0.01."""
    if schedule == "constant":
        return 1.0
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _wandb_run(cfg: Config, folder: Path):
    """An offline Weights & Biases run in the model folder, or None (disabled, or wandb not installed)."""
    if not cfg.train.wandb:
        return None
    try:
        import wandb
    except ImportError:
        print("train: train.wandb is on but wandb is not installed; metrics go to history.csv/json only")
        return None
    return wandb.init(
        project=cfg.train.wandb_project, dir=str(folder), mode="offline", config=config_to_dict(cfg), resume="allow"
    )


def lr_to_hr_map(lr_scale: BandScale, hr_scale: BandScale, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(gain, offset) per band that map LR-scaled values to label-scaled ones (for mean matching)."""
    span = hr_scale.high - hr_scale.low
    gain, offset = (lr_scale.high - lr_scale.low) / span, (lr_scale.low - hr_scale.low) / span
    return torch.from_numpy(gain).float().to(device), torch.from_numpy(offset).float().to(device)


def train(cfg: Config) -> dict:
    """Train (or resume) on every rank; rank 0 writes checkpoint.pt, history, loss_curves.png and model.pt."""
    t = cfg.train
    folder = model_dir(cfg)
    datasets = cfg.run_path / "datasets"
    train_paths, val_paths = shard_paths(datasets, "train"), shard_paths(datasets, "val")
    if not train_paths:
        raise StageError(f"no training shards in {datasets}; run `srpipe curate` first")
    lr_scale, hr_scale = scales(load_stats(cfg.run_path))
    torch.set_flush_denormal(True)  # denormal activations after a few Adam steps make CPU convolutions 20x slower
    ranks = Ranks()
    lead = ranks.rank == 0
    if lead:
        folder.mkdir(parents=True, exist_ok=True)
    device = torch.device(f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)
    delineation = None
    if cfg.loss.perceptual_weight > 0:
        delineation = load_delineation(cfg)
        if delineation is None:
            raise StageError(
                "loss.perceptual_weight > 0 needs the delineation net; run `srpipe train-delineation` first "
                "(or set loss.perceptual_weight = 0)"
            )
        delineation = delineation.to(device)

    train_set, val_set = ShardDataset(train_paths), ShardDataset(val_paths)
    sampler = DistributedSampler(train_set, ranks.size, ranks.rank, shuffle=True, seed=t.seed, drop_last=True)
    val_sampler = DistributedSampler(val_set, ranks.size, ranks.rank, shuffle=False) if len(val_set) else []
    val_loader = DataLoader(val_set, batch_size=t.batch_size, sampler=val_sampler, num_workers=t.loader_workers)
    per_rank = len(sampler)

    model = build_model(cfg.model, cfg.source.scale).to(device)
    shiftnet = ShiftNet(cfg.model.shiftnet_channels).to(device)
    trained = list(model.parameters()) + (list(shiftnet.parameters()) if cfg.loss.register else [])
    lr = t.lr * (ranks.size if t.scale_lr_with_ranks else 1)
    optimizer = torch.optim.Adam(trained, lr=lr)
    epoch, batch_done, step, elapsed, history = 0, 0, 0, 0.0, []
    best, sums = {"val_cpsnr": -math.inf}, {}
    checkpoint = folder / "checkpoint.pt"
    if checkpoint.exists():  # resume where the last checkpoint (end of epoch or mid-epoch) left off
        saved = torch.load(checkpoint, weights_only=False, map_location=device)
        model.load_state_dict(saved["model"])
        shiftnet.load_state_dict(saved["shiftnet"])
        optimizer.load_state_dict(saved["optimizer"])
        epoch, batch_done, step, elapsed = saved["epoch"], saved["batch_done"], saved["step"], saved["elapsed_s"]
        history, best, sums = saved["history"], saved["best"], saved["sums"]
        torch.set_rng_state(saved["rng"])
        if lead:
            print(f"train: resuming {folder.name} at epoch {epoch + 1}, batch {batch_done} ({elapsed:.0f} s trained)")
    if ranks.size > 1:  # every rank starts from rank 0's weights and optimizer state
        hvd = ranks.hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_parameters(shiftnet.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        named = [(f"sr.{n}", p) for n, p in model.named_parameters()]
        named += [(f"shift.{n}", p) for n, p in shiftnet.named_parameters()] if cfg.loss.register else []
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=named)
    lr_to_hr = lr_to_hr_map(lr_scale, hr_scale, device)
    amp = t.amp and device.type == "cuda"
    tracker = _wandb_run(cfg, folder) if lead else None
    if lead:
        print(f"train: {ranks.size} rank(s) on {device.type}, {len(train_set)} samples, lr {lr:g}")

    def save_checkpoint() -> None:
        payload = {
            "model": model.state_dict(),
            "shiftnet": shiftnet.state_dict(),
            "optimizer": optimizer.state_dict(),
            **{"epoch": epoch, "batch_done": batch_done, "step": step, "history": history, "best": best},
            **{"elapsed_s": time.perf_counter() - start, "sums": sums, "rng": torch.get_rng_state()},
        }
        _save(checkpoint, payload)

    budget_s = t.max_minutes * 60 if t.max_minutes > 0 else math.inf
    total_steps = t.epochs * max(per_rank // t.batch_size, 1)
    start = time.perf_counter() - elapsed
    clock, out_of_time = elapsed, False  # rank 0's seconds trained, shared by every rank each step
    model.train()
    shiftnet.train()
    while epoch < t.epochs and not out_of_time:
        sampler.set_epoch(epoch)
        order = list(sampler)[batch_done * t.batch_size :]  # the same order after a resume: seeded by epoch
        loader = DataLoader(
            train_set,
            batch_size=t.batch_size,
            sampler=order,
            drop_last=per_rank >= t.batch_size,
            num_workers=t.loader_workers,
            generator=torch.Generator().manual_seed(t.seed + epoch),
        )  # fmt: skip; its own generator: drawing worker seeds from the global one would break exact resumes
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if t.augment:  # seeded by position, so a resumed run draws what the unbroken one did
                seed = t.seed + 1_000_003 * ranks.rank + 7919 * step
                batch = dihedral(batch, torch.Generator().manual_seed(seed))
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(t.lr_schedule, max(step / total_steps, clock / budget_s))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                sr = model(batch["lr"], batch["lr_mask"])
            loss, terms = sr_losses(cfg.loss, sr.float(), batch, shiftnet, delineation, lr_to_hr)
            optimizer.zero_grad()  # Horovod's wrapper takes no set_to_none (it is the default)
            loss.backward()
            optimizer.step()
            for k, v in {"loss": loss.detach(), **{f"loss_{k}": v for k, v in terms.items()}}.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            step, batch_done = step + 1, batch_done + 1
            clock = ranks.lead_value(time.perf_counter() - start)
            out_of_time = clock > budget_s
            if out_of_time:
                break
            if t.checkpoint_every_steps > 0 and step % t.checkpoint_every_steps == 0 and lead:
                save_checkpoint()
        row = {"epoch": epoch + 1, "step": step, **ranks.average({k: v / max(batch_done, 1) for k, v in sums.items()})}
        row.update(validate(model, val_loader, ranks, device, cfg.loss.cpsnr_max_shift_px))
        row["seconds"] = round(time.perf_counter() - start, 1)
        epoch, batch_done, sums = epoch + 1, 0, {}
        history.append(row)
        if not lead:
            continue
        print(
            f"train: epoch {epoch} loss {row['loss']:.5f} val cPSNR {row['val_cpsnr']:.2f} dB "
            f"(bicubic {row['val_bicubic_cpsnr']:.2f} dB) at {row['seconds']:.0f} s"
        )
        if tracker is not None:
            tracker.log(row, step=step)
        if not row["val_cpsnr"] <= best["val_cpsnr"]:  # also true for the first epoch and for NaN-free improvements
            best = {"val_cpsnr": row["val_cpsnr"], "val_psnr": row["val_psnr"], "epoch": epoch}
            _save(folder / "best.pt", {"model": model.state_dict()})
        save_checkpoint()
        _write_history(folder, history)
        plot_loss_curves(folder / "loss_curves.png", history)

    summary = {
        "epochs": epoch,
        "steps": step,
        "ranks": ranks.size,
        "rank": ranks.rank,
        "best_val_cpsnr": best["val_cpsnr"],
        "param_checksum": float(sum(p.detach().double().sum().item() for p in model.parameters())),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if tracker is not None:
        tracker.finish()
    if not lead:
        return summary
    weights = torch.load(folder / "best.pt", weights_only=False)["model"] if (folder / "best.pt").exists() else None
    _save(
        folder / "model.pt",
        {
            "model": weights or model.state_dict(),
            "model_config": dataclasses.asdict(cfg.model),
            "scale": cfg.source.scale,
            "n_frames": cfg.curate.n_frames,
            "lr_scale": lr_scale.to_json(),
            "hr_scale": hr_scale.to_json(),
            "best": best,
        },
    )
    state.write_text(folder / "config.toml", (cfg.run_path / "config.toml").read_text())
    return summary


@dataclasses.dataclass
class TrainedModel:
    """A trained model with the normalisation it was trained with."""

    net: HighResNet
    lr_scale: BandScale
    hr_scale: BandScale
    n_frames: int
    scale: int

    @torch.no_grad()
    def super_resolve(self, lr: torch.Tensor, mask: torch.Tensor, ensemble: bool = False) -> torch.Tensor:
        """(B, K, 4, h, w) LR-scaled frames, (B, K, h, w) clear masks -> (B, 4, s*h, s*w) label-scaled SR in [0, 1].

        `ensemble`: the mean over the eight flips/rotations (`infer.self_ensemble`).
        """
        sr = self_ensemble(self.net, lr, mask) if ensemble else self.net(lr, mask)
        return sr.clamp(0, 1)


def load_trained(cfg: Config) -> TrainedModel:
    """Load the configured `models/<name>/model.pt` (see `load_model`)."""
    return load_model(model_dir(cfg) / "model.pt")


def load_model(path: str | Path) -> TrainedModel:
    """Load a model.pt in eval mode, once per process while the file is unchanged (so do not train the result)."""
    path = Path(path)
    if not path.exists():
        raise StageError(f"{path} does not exist; run `srpipe train` first")
    return _load_model_file(str(path.resolve()), *state.file_version(path))


@functools.lru_cache(maxsize=2)
def _load_model_file(path: str, inode: int, mtime_ns: int) -> TrainedModel:
    """The TrainedModel in one version of a model.pt; inode and mtime key the cache: a retrained model is reloaded."""
    saved = torch.load(path, weights_only=False)
    torch.set_flush_denormal(True)  # as in training: denormals slow CPU convolutions many times over
    net = build_model(ModelConfig(**saved["model_config"]), saved["scale"])
    net.load_state_dict(saved["model"])
    net.eval()
    return TrainedModel(
        net,
        BandScale.from_json(saved["lr_scale"]),
        BandScale.from_json(saved["hr_scale"]),
        saved["n_frames"],
        saved["scale"],
    )
