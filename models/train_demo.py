"""Train the demo model: ``python -m models.train_demo [--unet-steps N] [--out DIR] [--resume]``.

Two phases, both reproducible from ``--seed``: every batch is drawn from a ``torch.Generator``
seeded by (seed, phase, step), so a resumed run sees exactly the batches an uninterrupted one would.

1. **VAE** (short): the factor-4 autoencoder learns to reconstruct freshly rendered scenes.
2. **UNet + text encoder**: a fixed pool of scenes is encoded once (cached in ``DIR/pool.pt``);
   each step takes a batch of latents (sampled from the VAE posterior), drops 10 % of the captions
   (so classifier-free guidance works), and regresses v (plain v loss: high-noise steps, where the
   layout is decided, keep their weight; ``min_snr`` would down-weight them). A linear probe on the
   text encoder's states must also read each one-object caption's colour, shape and position
   (``Trainer.attribute_loss``), so the encoder keeps every word a picture depends on. An EMA of
   the weights is what gets exported.

A checkpoint (weights, optimisers, EMA, step, RNG state) is written atomically to
``DIR/checkpoint.pt`` every ``--checkpoint-minutes`` and at the end of each phase; ``--resume``
continues from it. ``--init-from MODEL_DIR`` starts instead from an exported model (the committed
``models/demo``, say): its VAE is kept as is (phase 1 is skipped) and its UNet (when its architecture
is this module's) and text encoder are trained for ``--unet-steps`` more steps with fresh optimisers,
so training can go on across machines that do not share the checkpoint. At the end (or with
``--export-only``) the pipeline is saved, fp16 safetensors, to ``--export`` (default ``models/demo``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.demo_data import COLOURS, POSITIONS, SHAPES, Scene, render, scenes
from models.demo_model import TEXT_WIDTH, build_pipeline, build_untrained, training_scheduler

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("models/demo-train")
DEFAULT_EXPORT = Path("models/demo")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; stored in the checkpoint and checked on resume."""

    seed: int = 0
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_lr: float = 5e-4
    unet_steps: int = 10000
    batch: int = 32
    lr: float = 3e-4
    warmup: int = 200
    pool: int = 30000
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    min_snr: float | None = None  # None: plain v loss (SNR + 1 weighting); a number: min-SNR-gamma
    attribute_weight: float = 0.1  # the text encoder's attribute probe (see ``attribute_loss``); 0: none
    scale_samples: int = 256  # scenes the latent scaling factor is measured on
    init_from: str | None = None  # an exported model directory to start from (see the module docstring)


def _generator(config: TrainConfig, phase: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(random.Random(f"{config.seed}-{phase}-{step}").getrandbits(63))


def _architecture(config: Any) -> dict[str, Any]:
    """A model config as JSON (tuples and lists alike) without diffusers' bookkeeping keys (``_name_or_path``...)."""
    plain: dict[str, Any] = json.loads(json.dumps(dict(config), default=str))
    return {key: value for key, value in plain.items() if not key.startswith("_")}


ATTRIBUTES: tuple[tuple[str, ...], ...] = (tuple(COLOURS), SHAPES, tuple(POSITIONS))


def attribute_labels(scene: Scene) -> list[int]:
    """(colour, shape, position) indices of a one-object scene's object; -1 (no label) for the others."""
    if len(scene.objects) != 1:
        return [-1] * len(ATTRIBUTES)
    obj = scene.objects[0]
    return [names.index(value) for names, value in zip(ATTRIBUTES, (obj.colour, obj.shape, obj.position), strict=True)]


def label_rows(batch: Iterable[Scene]) -> torch.Tensor:
    """:func:`attribute_labels` of each scene, as the pool stores them (int8, one row per scene)."""
    return torch.tensor([attribute_labels(scene) for scene in batch], dtype=torch.int8)


def to_tensor(images: Sequence[Any]) -> torch.Tensor:
    """PIL images -> a float tensor in [-1, 1], NCHW."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


class Trainer:
    """Holds the components, optimisers and progress of one run; see the module docstring."""

    def __init__(self, config: TrainConfig, out: Path) -> None:
        self.config, self.out = config, out
        self.vae, self.unet, self.text_encoder, self.tokenizer = build_untrained(config.seed)
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 3)
            self.probe = torch.nn.Linear(TEXT_WIDTH, sum(len(names) for names in ATTRIBUTES))
        self.trained = [*self.unet.parameters(), *self.text_encoder.parameters(), *self.probe.parameters()]
        # No weight decay: it would shrink the rows of the 49408-token embedding our captions never use.
        self.opt = torch.optim.AdamW(self.trained, lr=config.lr, weight_decay=0.0)
        self.ema_unet, self.ema_text = copy.deepcopy(self.unet), copy.deepcopy(self.text_encoder)
        for ema in (self.ema_unet, self.ema_text):
            ema.requires_grad_(False)
        self.scheduler = training_scheduler()
        self.vae_step = self.unet_step = 0
        self._last_save = time.monotonic()
        if config.init_from is not None:
            self._start_from(Path(config.init_from))

    def _start_from(self, directory: Path) -> None:
        """Take the weights of an exported model (fp16 on disk, fp32 here); the VAE phase counts as done."""
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
        from transformers import CLIPTextModel

        vae = AutoencoderKL.from_pretrained(directory / "vae", local_files_only=True)
        unet = UNet2DConditionModel.from_pretrained(directory / "unet", local_files_only=True)
        text = CLIPTextModel.from_pretrained(directory / "text_encoder", local_files_only=True)
        pairs = [(self.vae, vae), (self.text_encoder, text), (self.ema_text, text)]
        if _architecture(unet.config) == _architecture(self.unet.config):
            pairs += [(self.unet, unet), (self.ema_unet, unet)]
        else:
            logger.info("%s/unet has another architecture: the UNet starts fresh", directory)
        for target, source in pairs:
            target.load_state_dict({k: v.float() for k, v in source.state_dict().items()})
        self.vae.register_to_config(  # type: ignore[no-untyped-call]
            scaling_factor=float(vae.config["scaling_factor"])
        )
        self.vae.eval().requires_grad_(False)
        self.vae_step = self.config.vae_steps
        logger.info("starting from the weights of %s (VAE phase skipped)", directory)

    # --- checkpoints ---------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config["scaling_factor"])

    def save(self) -> None:
        state = {
            "config": asdict(self.config),
            "vae_step": self.vae_step,
            "unet_step": self.unet_step,
            "scaling_factor": self.scaling_factor,
            "vae": self.vae.state_dict(),
            "unet": self.unet.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "ema_unet": self.ema_unet.state_dict(),
            "ema_text": self.ema_text.state_dict(),
            "probe": self.probe.state_dict(),
            "vae_opt": self.vae_opt.state_dict(),
            "opt": self.opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        self.out.mkdir(parents=True, exist_ok=True)
        staging = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, staging)
        os.replace(staging, self.checkpoint_path)
        self._last_save = time.monotonic()
        logger.info("checkpoint: vae step %d, unet step %d -> %s", self.vae_step, self.unet_step, self.checkpoint_path)

    def load(self) -> None:
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        saved = TrainConfig(**state["config"])
        if replace(saved, unet_steps=self.config.unet_steps) != self.config:
            raise ValueError(f"checkpoint {self.checkpoint_path} was made with {saved}, not {self.config}")
        self.vae_step, self.unet_step = state["vae_step"], state["unet_step"]
        self.vae.register_to_config(  # type: ignore[no-untyped-call]
            scaling_factor=state["scaling_factor"]
        )
        for name in ("vae", "unet", "text_encoder", "ema_unet", "ema_text", "probe", "vae_opt", "opt"):
            getattr(self, name).load_state_dict(state[name])
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed at vae step %d, unet step %d", self.vae_step, self.unet_step)

    def _maybe_save(self, every_s: float) -> None:
        if time.monotonic() - self._last_save >= every_s:
            self.save()

    # --- phase 1: the autoencoder --------------------------------------------------------------

    def train_vae(self, every_s: float) -> None:
        config = self.config
        self.vae.train()
        bar = tqdm(total=config.vae_steps, initial=self.vae_step, desc="vae", mininterval=5)
        while self.vae_step < config.vae_steps:
            for group in self.vae_opt.param_groups:  # cosine from vae_lr down to a tenth of it
                group["lr"] = config.vae_lr * (0.1 + 0.45 * (1 + math.cos(math.pi * self.vae_step / config.vae_steps)))
            generator = _generator(config, "vae", self.vae_step)
            batch = [render(s) for s in scenes(int(torch.randint(2**31, (1,), generator=generator)), config.vae_batch)]
            images = to_tensor(batch)
            posterior = self.vae.encode(images).latent_dist
            reconstruction = self.vae.decode(posterior.sample(generator=generator)).sample
            loss = F.mse_loss(reconstruction, images) + 0.5 * F.l1_loss(reconstruction, images)
            loss = loss + 1e-6 * posterior.kl().mean()
            self.vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.vae_opt.step()
            self.vae_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            self._maybe_save(every_s)
        bar.close()
        self.vae.eval().requires_grad_(False)
        if self.unet_step == 0 and self.config.init_from is None:  # a model started from keeps its factor
            self._set_scaling_factor()
        self.save()

    @torch.no_grad()
    def _set_scaling_factor(self) -> None:
        # As in SD: scale latents to unit variance, measured on scenes the pool does not use.
        images = to_tensor([render(s) for s in scenes(self.config.seed + 10_000, self.config.scale_samples)])
        std = float(self.vae.encode(images).latent_dist.mean.std())
        self.vae.register_to_config(  # type: ignore[no-untyped-call]
            scaling_factor=1.0 / std
        )
        psnr = -10 * math.log10(F.mse_loss(self.vae(images).sample.clamp(-1, 1), images).item() / 4)
        logger.info("vae: latent std %.3f, reconstruction PSNR %.1f dB", std, psnr)

    # --- phase 2: UNet + text encoder ----------------------------------------------------------

    @torch.no_grad()
    def pool(self) -> dict[str, Any]:
        """The encoded training pool (latent mean/std, caption ids), built once and cached."""
        path = self.out / "pool.pt"
        key = {"seed": self.config.seed, "size": self.config.pool, "vae_steps": self.config.vae_steps,
               "init_from": self.config.init_from}  # fmt: skip
        if path.is_file():
            cached: dict[str, Any] = torch.load(path, weights_only=False)
            if cached.get("key") == key:
                if "labels" not in cached:  # a pool from before the attribute probe: labels need no VAE
                    cached["labels"] = label_rows(scenes(self.config.seed, self.config.pool))
                    torch.save(cached, path)
                return cached
        means, stds, ids, labels = [], [], [], []
        pool = scenes(self.config.seed, self.config.pool)
        for start in tqdm(range(0, self.config.pool, 256), desc="encode pool", mininterval=5):
            chunk = [next(pool) for _ in range(min(256, self.config.pool - start))]
            posterior = self.vae.encode(to_tensor([render(s) for s in chunk])).latent_dist
            means.append(posterior.mean.half())
            stds.append(posterior.std.half())
            ids.append(self._tokenize([s.caption for s in chunk]))
            labels.append(label_rows(chunk))
        data: dict[str, Any] = {"key": key, "mean": torch.cat(means), "std": torch.cat(stds), "ids": torch.cat(ids),
                                "labels": torch.cat(labels)}  # fmt: skip
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(data, path)
        return data

    def _tokenize(self, captions: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        ids: torch.Tensor = tokens.input_ids.to(torch.int32)
        return ids

    def _lr(self) -> float:
        config, step = self.config, self.unet_step
        if step < config.warmup:
            return config.lr * (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.unet_steps - config.warmup)
        return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))

    def unet_loss(self, pool: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        config = self.config
        index = torch.randint(len(pool["mean"]), (config.batch,), generator=generator)
        mean, std = pool["mean"][index].float(), pool["std"][index].float()
        latents = (mean + std * torch.randn(mean.shape, generator=generator)) * self.scaling_factor
        ids = pool["ids"][index].long()
        drop = torch.rand(config.batch, generator=generator) < config.caption_dropout
        ids[drop] = self._tokenize([""]).long()
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(self.scheduler.config["num_train_timesteps"], (config.batch,), generator=generator)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)  # type: ignore[arg-type]
        target = self.scheduler.get_velocity(latents, noise, timesteps)  # type: ignore[arg-type]
        states = self.text_encoder(ids)[0]
        prediction = self.unet(noisy, timesteps, states).sample
        per_sample = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
        if config.min_snr is not None:
            alpha_bar = self.scheduler.alphas_cumprod[timesteps]
            snr = alpha_bar / (1 - alpha_bar)
            per_sample = per_sample * snr.clamp(max=config.min_snr) / (snr + 1)  # min-SNR-gamma for v-prediction
        labels = pool["labels"][index].long()
        labels[drop] = -1
        return per_sample.mean() + config.attribute_weight * self.attribute_loss(states, labels)

    def attribute_loss(self, states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of a linear probe reading colour, shape and position off the caption's states.

        Without it the text encoder drifted to encode colour alone: colour moves the most pixels, so
        it gets the gradient first, and the final layer norm leaves the other words little room
        (shipped model: "red" vs "blue" 13 apart in the states, "top left" vs "bottom right" 1.5,
        "circle" vs "square" 1.4, of a norm of 8). Then the UNet never learned places. The probe reads
        the mean over all 77 states, padding included (what the UNet's cross-attention mostly sees);
        it is not exported. Only one-object captions carry labels.
        """
        logits = self.probe(states.mean(dim=1))
        losses, start = [], 0
        for column, names in enumerate(ATTRIBUTES):
            target = labels[:, column]
            if bool((target >= 0).any()):
                losses.append(F.cross_entropy(logits[:, start : start + len(names)], target, ignore_index=-1))
            start += len(names)
        return torch.stack(losses).sum() if losses else logits.sum() * 0

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.unet_step) / (10 + self.unet_step))
        for ema, live in ((self.ema_unet, self.unet), (self.ema_text, self.text_encoder)):
            for target, source in zip(ema.parameters(), live.parameters(), strict=True):
                target.lerp_(source, 1 - decay)

    def train_unet(self, every_s: float) -> None:
        config = self.config
        pool = self.pool()
        self.unet.train()
        self.text_encoder.train()
        bar = tqdm(total=config.unet_steps, initial=self.unet_step, desc="unet", mininterval=10)
        while self.unet_step < config.unet_steps:
            for group in self.opt.param_groups:
                group["lr"] = self._lr()
            loss = self.unet_loss(pool, _generator(config, "unet", self.unet_step))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(self.trained, 1.0)
            self.opt.step()
            self.unet_step += 1
            self._update_ema()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self._lr():.2e}")
            self._maybe_save(every_s)
        bar.close()
        self.save()

    # --- export --------------------------------------------------------------------------------

    def export(self, directory: Path, *, fp16: bool = True) -> Path:
        """Save the EMA weights as a diffusers ``StableDiffusionPipeline`` directory."""
        pipe = build_pipeline(
            copy.deepcopy(self.vae), copy.deepcopy(self.ema_unet), copy.deepcopy(self.ema_text), self.tokenizer
        )
        if fp16:
            pipe = pipe.to(dtype=torch.float16)
        pipe.save_pretrained(directory, safe_serialization=True)
        if fp16:
            # The weights are stored in fp16 to halve the file, but transformers would also compute
            # in the stored dtype, unlike diffusers: declare fp32 so a plain from_pretrained works on a CPU.
            config_path = directory / "text_encoder" / "config.json"
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config["dtype"] = "float32"
            config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        # The fast tokenizer's file is pretty-printed (3.6 MB); compact JSON is the same tokenizer in 1.7 MB.
        tokenizer_path = directory / "tokenizer" / "tokenizer.json"
        if tokenizer_path.is_file():
            data = json.loads(tokenizer_path.read_text(encoding="utf-8"))
            tokenizer_path.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
        logger.info("exported the demo model (unet step %d) to %s", self.unet_step, directory)
        return directory


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.train_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint directory (default %(default)s)")
    parser.add_argument("--export", type=Path, default=DEFAULT_EXPORT, help="model directory (default %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--export-only", action="store_true", help="export the checkpoint's weights and stop")
    parser.add_argument("--init-from", type=Path, help="start from this exported model's weights (skips the VAE)")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    parser.add_argument("--unet-steps", type=int, default=TrainConfig.unet_steps)
    parser.add_argument("--batch", type=int, default=TrainConfig.batch)
    parser.add_argument("--pool", type=int, default=TrainConfig.pool)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default %(default)s)")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    config = TrainConfig(
        seed=args.seed,
        vae_steps=args.vae_steps,
        unet_steps=args.unet_steps,
        batch=args.batch,
        pool=args.pool,
        init_from=None if args.init_from is None else str(args.init_from),
    )
    trainer = Trainer(config, args.out)
    if args.resume or args.export_only:
        trainer.load()
    if not args.export_only:
        started = time.monotonic()
        every_s = args.checkpoint_minutes * 60
        trainer.train_vae(every_s)
        trainer.train_unet(every_s)
        logger.info("trained in %.1f min", (time.monotonic() - started) / 60)
    trainer.export(args.export)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
