"""Train HighRes-Net + ShiftNet on the curated shards, on 1 process or N Horovod or DDP ranks; resumable; top to bottom.

The same code runs as one plain process (`srpipe train`), under `srun`, `mpirun`, `torchrun` or `horovodrun`:
`train.backend` picks Horovod or torch DDP
(srpipe.training.ranks), which sees the launcher's ranks (one without a launcher).
Rank 0 alone writes checkpoints, history and plots.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import socket
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from srpipe import state
from srpipe.config import Config, LossConfig, config_to_dict
from srpipe.data.augment import dihedral
from srpipe.data.labelmap import lr_to_hr_map
from srpipe.data.normalise import load_stats, scales
from srpipe.data.shards import ShardDataset, shard_paths
from srpipe.errors import StageError
from srpipe.metrics import score
from srpipe.models import HighResNet, build_model
from srpipe.models.highresnet import bicubic, masked_median
from srpipe.models.pretrained import init_weights
from srpipe.models.shiftnet import ShiftNet
from srpipe.models.trained import MODEL_FILE, model_dir
from srpipe.training.calibrate import calibrate_saved
from srpipe.training.checkpoint import load_checkpoint, save_checkpoint
from srpipe.training.losses import as_trained, autocast_supported, low_precision, sr_losses
from srpipe.training.ranks import World, make_world
from srpipe.training.train_delineation import load_delineation


@torch.no_grad()
def validate(model: HighResNet, loader: DataLoader, ranks: World, device: torch.device, loss: LossConfig) -> dict:
    """Mean PSNR and cPSNR of SR and of bicubic of the median, over all ranks, scored as `srpipe evaluate` scores:
    inside `loss.scored_border_px` (the pixels the loss trains), cPSNR registered by up to `loss.cpsnr_max_shift_px`."""
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)
    border, max_shift = loss.scored_border_px, loss.cpsnr_max_shift_px
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        sr = model(batch["lr"], batch["lr_mask"]).float()
        bic = bicubic(masked_median(batch["lr"], batch["lr_mask"]), model.scale)
        hr, mask = batch["hr"].cpu(), batch["hr_mask"].cpu()
        scored = [score(image.cpu(), hr, mask, border, max_shift) for image in (sr, bic)]
        sums += torch.tensor([s[k].sum() for s in scored for k in ("psnr", "cpsnr")] + [len(hr)], dtype=torch.float64)
    model.train()
    sums = ranks.sum(sums)
    names = ("val_psnr", "val_cpsnr", "val_bicubic_psnr", "val_bicubic_cpsnr")
    n = sums[4].item()
    return {k: (sums[i].item() / n if n else float("nan")) for i, k in enumerate(names)}


def _save(path: Path, payload: dict) -> None:
    with state.atomic_path(path) as tmp:
        state.save_torch(payload, tmp)


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


@dataclasses.dataclass
class _Setup:
    """What the training loop reads: the world, data, networks, optimiser and budgets (fixed for the whole run)."""

    cfg: Config
    loss: LossConfig  # cfg.loss as trained (`losses.as_trained`)
    ranks: World
    device: torch.device
    folder: Path
    train_set: ShardDataset
    sampler: DistributedSampler
    val_loader: DataLoader
    model: HighResNet
    shiftnet: ShiftNet
    optimizer: torch.optim.Optimizer
    delineation: torch.nn.Module | None
    lr_to_hr: tuple[torch.Tensor, torch.Tensor]
    lr: float
    budget_s: float
    total_steps: int
    amp: bool  # bfloat16 autocast of the forward passes (train.amp, where the device runs bf16 natively)
    step_model: torch.nn.Module  # what the steps call forward: `model`, or its DDP wrapper after `_distribute`
    step_shiftnet: torch.nn.Module  # likewise for `shiftnet`

    @property
    def lead(self) -> bool:
        """True on rank 0, which alone writes files."""
        return self.ranks.rank == 0


@dataclasses.dataclass
class _Progress:
    """Where training stands; all of it goes into the checkpoint, so a resume continues exactly."""

    epoch: int = 0
    batch_done: int = 0
    step: int = 0
    elapsed_s: float = 0.0
    history: list[dict] = dataclasses.field(default_factory=list)
    best: dict = dataclasses.field(default_factory=lambda: {"val_cpsnr": -math.inf})
    sums: dict = dataclasses.field(default_factory=dict)
    start: float = 0.0  # perf_counter at the (virtual) start: now - elapsed_s on a resume
    clock_s: float = 0.0  # rank 0's seconds trained, shared by every rank each step (one budget, one lr)
    out_of_time: bool = False


def _device(ranks: World) -> torch.device:
    """This rank's GPU when there is one, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device(f"cuda:{ranks.local_rank}")
    torch.cuda.set_device(device)
    return device


def _frozen_delineation(cfg: Config, device: torch.device) -> torch.nn.Module | None:
    """The frozen delineation net of the perceptual loss (None when its weight is 0), channels-last (no gradients)."""
    if cfg.loss.perceptual_weight <= 0:
        return None
    net = load_delineation(cfg)
    if net is None:
        raise StageError(
            "loss.perceptual_weight > 0 needs the delineation net; run `srpipe train-delineation` first "
            "(or set loss.perceptual_weight = 0)"
        )
    return net.to(device, memory_format=torch.channels_last)


def _setup(cfg: Config) -> _Setup:
    """Shards, samplers, HighRes-Net + ShiftNet and Adam on this rank (lr scaled with the ranks when set)."""
    t = cfg.train
    datasets = cfg.layout.datasets
    train_paths, val_paths = shard_paths(datasets, "train"), shard_paths(datasets, "val")
    if not train_paths:
        raise StageError(f"no training shards in {datasets}; run `srpipe curate` first")
    lr_scale, hr_scale = scales(load_stats(cfg.run_path))
    torch.set_flush_denormal(True)  # denormal activations after a few Adam steps make CPU convolutions 20x slower
    ranks = make_world(t.backend)
    device = _device(ranks)
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)
    delineation = _frozen_delineation(cfg, device)  # before the models: it draws from the RNG
    train_set, val_set = ShardDataset(train_paths), ShardDataset(val_paths)
    sampler = DistributedSampler(train_set, ranks.size, ranks.rank, shuffle=True, seed=t.seed, drop_last=True)
    val_sampler = DistributedSampler(val_set, ranks.size, ranks.rank, shuffle=False) if len(val_set) else []
    val_loader = DataLoader(val_set, batch_size=t.batch_size, sampler=val_sampler, num_workers=t.loader_workers)
    # oneDNN's fastest layout for these convolutions on CPU (contiguous costs 30 % of a step), on every backend alike
    layout = torch.channels_last
    lr_to_hr = lr_to_hr_map(lr_scale, hr_scale, device)
    model = build_model(cfg.model, cfg.source.scale).to(device, memory_format=layout).set_lr_to_hr(*lr_to_hr)
    shiftnet = ShiftNet(cfg.model.shiftnet_channels, cfg.model.shiftnet_pool).to(device, memory_format=layout)
    trained = list(model.parameters()) + (list(shiftnet.parameters()) if cfg.loss.register else [])
    lr = t.lr * (ranks.size if t.scale_lr_with_ranks else 1)
    return _Setup(
        cfg=cfg,
        loss=as_trained(cfg.loss, cfg.model.consistency),
        ranks=ranks,
        device=device,
        folder=model_dir(cfg),
        train_set=train_set,
        sampler=sampler,
        val_loader=val_loader,
        model=model,
        shiftnet=shiftnet,
        optimizer=torch.optim.Adam(trained, lr=lr),
        delineation=delineation,
        lr_to_hr=lr_to_hr,
        lr=lr,
        budget_s=t.max_minutes * 60 if t.max_minutes > 0 else math.inf,
        total_steps=t.epochs * max(len(sampler) // t.batch_size, 1),
        amp=t.amp and autocast_supported(device),
        step_model=model,
        step_shiftnet=shiftnet,
    )


def _resume(run: _Setup) -> _Progress:
    """Rank 0's checkpoint (end of epoch or mid-epoch), loaded by rank 0 and sent to every rank; else a fresh start."""
    saved = load_checkpoint(run.folder) if run.lead else None
    saved = run.ranks.broadcast_object(saved, name="checkpoint")
    if saved is None:
        if run.cfg.train.init_from:
            path = init_weights(run.cfg, run.model, run.shiftnet)
            if run.lead:
                print(f"train: starting from the weights in {path}")
        return _Progress(start=time.perf_counter())
    run.model.load_state_dict(saved["model"])
    run.shiftnet.load_state_dict(saved["shiftnet"])
    run.optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    keys = ("epoch", "batch_done", "step", "elapsed_s", "history", "best", "sums")
    start = time.perf_counter() - saved["elapsed_s"]
    progress = _Progress(**{k: saved[k] for k in keys}, start=start, clock_s=saved["elapsed_s"])
    if run.lead:
        print(f"train: resuming {run.folder.name} at epoch {progress.epoch + 1}, batch {progress.batch_done} "
              f"({progress.elapsed_s:.0f} s trained)")  # fmt: skip
    return progress


def _distribute(run: _Setup) -> None:
    """Every rank starts from rank 0's weights and optimiser state; the backend averages the gradients."""
    parts = run.ranks.distribute(run.model, run.shiftnet, run.optimizer, run.cfg.loss.register)
    run.step_model, run.step_shiftnet, run.optimizer = parts.model, parts.shiftnet, parts.optimizer


def _save_checkpoint(run: _Setup, progress: _Progress) -> None:
    """checkpoint.pt (the one before kept): weights, optimiser, counters, history and the RNG state (rank 0)."""
    payload = {
        "model": run.model.state_dict(),
        "shiftnet": run.shiftnet.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        **{k: getattr(progress, k) for k in ("epoch", "batch_done", "step", "history", "best", "sums")},
        "elapsed_s": time.perf_counter() - progress.start,
        "rng": torch.get_rng_state(),
    }
    save_checkpoint(run.folder, payload)


def _epoch_loader(run: _Setup, progress: _Progress) -> DataLoader:
    """This epoch's remaining batches, in the order an unbroken run draws them (seeded by epoch)."""
    t = run.cfg.train
    run.sampler.set_epoch(progress.epoch)
    order = list(run.sampler)[progress.batch_done * t.batch_size :]
    return DataLoader(
        run.train_set,
        batch_size=t.batch_size,
        sampler=order,
        drop_last=len(run.sampler) >= t.batch_size,
        num_workers=t.loader_workers,
        generator=torch.Generator().manual_seed(t.seed + progress.epoch),
    )  # fmt: skip; its own generator: drawing worker seeds from the global one would break exact resumes


def _train_step(run: _Setup, progress: _Progress, batch: dict[str, torch.Tensor]) -> None:
    """One optimiser step on `batch` (augmented, seeded by position), its loss terms added to the epoch's sums."""
    t = run.cfg.train
    batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
    if t.augment:  # seeded by position, so a resumed run draws what the unbroken one did
        seed = t.seed + 1_000_003 * run.ranks.rank + 7919 * progress.step
        batch = dihedral(batch, torch.Generator().manual_seed(seed))
    done = max(progress.step / run.total_steps, progress.clock_s / run.budget_s)
    for group in run.optimizer.param_groups:
        group["lr"] = run.lr * lr_factor(t.lr_schedule, done)
    with low_precision(batch["lr"], run.amp):
        sr = run.step_model(batch["lr"], batch["lr_mask"])
    shiftnet = run.step_shiftnet
    loss, terms = sr_losses(run.loss, sr.float(), batch, shiftnet, run.delineation, run.lr_to_hr, run.amp)
    run.optimizer.zero_grad()  # Horovod's wrapper takes no set_to_none (it is the default)
    loss.backward()
    run.optimizer.step()
    for k, v in {"loss": loss.detach(), **{f"loss_{k}": v for k, v in terms.items()}}.items():
        progress.sums[k] = progress.sums.get(k, 0.0) + v.item()
    progress.step, progress.batch_done = progress.step + 1, progress.batch_done + 1


def _train_epoch(run: _Setup, progress: _Progress) -> None:
    """The rest of this epoch's steps, checkpointing every `checkpoint_every_steps`; stops when out of time."""
    every = run.cfg.train.checkpoint_every_steps
    for batch in _epoch_loader(run, progress):
        _train_step(run, progress, batch)
        progress.clock_s = run.ranks.lead_value(time.perf_counter() - progress.start)
        progress.out_of_time = progress.clock_s > run.budget_s
        if progress.out_of_time:
            return
        if every > 0 and progress.step % every == 0 and run.lead:
            _save_checkpoint(run, progress)


def _end_epoch(run: _Setup, progress: _Progress, tracker) -> None:
    """Validate, log, keep the best weights and checkpoint (rank 0 writes); the next epoch starts at batch 0."""
    averaged = run.ranks.average({k: v / max(progress.batch_done, 1) for k, v in progress.sums.items()})
    row = {"epoch": progress.epoch + 1, "step": progress.step, **averaged}
    row.update(validate(run.model, run.val_loader, run.ranks, run.device, run.loss))
    row["seconds"] = round(time.perf_counter() - progress.start, 1)
    progress.epoch, progress.batch_done, progress.sums = progress.epoch + 1, 0, {}
    progress.history.append(row)
    if not run.lead:
        return
    print(
        f"train: epoch {progress.epoch} loss {row['loss']:.5f} val cPSNR {row['val_cpsnr']:.2f} dB "
        f"(bicubic {row['val_bicubic_cpsnr']:.2f} dB) at {row['seconds']:.0f} s"
    )
    if tracker is not None:
        tracker.log(row, step=progress.step)
    if not row["val_cpsnr"] <= progress.best["val_cpsnr"]:  # also true for the first epoch and for NaN-free gains
        progress.best = {"val_cpsnr": row["val_cpsnr"], "val_psnr": row["val_psnr"], "epoch": progress.epoch}
        _save(run.folder / "best.pt", {"model": run.model.state_dict()})
    _save_checkpoint(run, progress)
    _write_history(run.folder, progress.history)
    plot_loss_curves(run.folder / "loss_curves.png", progress.history)


def _save_model(run: _Setup, progress: _Progress) -> None:
    """model.pt: the best epoch's weights (else the last) with the model's shape and normalisation (rank 0)."""
    cfg, folder = run.cfg, run.folder
    lr_scale, hr_scale = scales(load_stats(cfg.run_path))
    best = folder / "best.pt"
    weights = torch.load(best, weights_only=False)["model"] if best.exists() else run.model.state_dict()
    payload = {
        "model": weights,
        "model_config": dataclasses.asdict(cfg.model),
        "scale": cfg.source.scale,
        "n_frames": cfg.curate.n_frames,
        "lr_scale": lr_scale.to_json(),
        "hr_scale": hr_scale.to_json(),
        "best": progress.best,
    }
    _save(folder / MODEL_FILE, payload)
    calibrate_saved(cfg, folder / MODEL_FILE)
    state.write_text(folder / "config.toml", cfg.layout.config.read_text())


def train(cfg: Config) -> dict:
    """Train (or resume) on every rank; rank 0 writes checkpoint.pt, history, loss_curves.png and model.pt."""
    run = _setup(cfg)
    if run.lead:
        run.folder.mkdir(parents=True, exist_ok=True)
    progress = _resume(run)
    _distribute(run)
    tracker = _wandb_run(cfg, run.folder) if run.lead else None
    if run.lead:
        print(
            f"train: {run.ranks.size} rank(s) ({run.ranks.backend}) on {run.device.type}, "
            f"{len(run.train_set)} samples, lr {run.lr:g}"
        )
    run.model.train()
    run.shiftnet.train()
    while progress.epoch < cfg.train.epochs and not progress.out_of_time:
        _train_epoch(run, progress)
        _end_epoch(run, progress, tracker)
    if tracker is not None:
        tracker.finish()
    if run.lead:
        _save_model(run, progress)
    run.ranks.close()
    return {
        "epochs": progress.epoch,
        "steps": progress.step,
        "ranks": run.ranks.size,
        "backend": run.ranks.backend,
        "host": socket.gethostname(),
        "rank": run.ranks.rank,
        "best_val_cpsnr": progress.best["val_cpsnr"],
        "param_checksum": float(sum(p.detach().double().sum().item() for p in run.model.parameters())),
        "seconds": round(time.perf_counter() - progress.start, 1),
    }
