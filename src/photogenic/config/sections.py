"""The config tree: one typed, frozen dataclass per part, each field with a one-line doc and bounds."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ConfigError",
    "doc",
    "Config",
    "WorldConfig",
    "DataConfig",
    "ModelConfig",
    "RecipeConfig",
    "TrainConfig",
    "JudgesConfig",
    "CurateConfig",
    "EvaluateConfig",
    "PanelConfig",
    "StorageConfig",
    "TrackingConfig",
    "DECODER_SIDE",
    "shown_uri",
    "check_store_uri",
]


class ConfigError(ValueError):
    """A config value, key, file or preset is not acceptable; the message names it and says what is allowed."""


def doc(text: str, default: Any = dataclasses.MISSING, **bounds: float) -> Any:
    """A dataclass field with a one-line doc and optional numeric bounds (ge, gt, le, lt)."""
    unknown = set(bounds) - {"ge", "gt", "le", "lt"}
    if unknown:
        raise TypeError(f"unknown bound(s) {sorted(unknown)}")
    metadata = {"doc": text, **bounds}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or a default_factory for mutable defaults")
    if callable(default):  # a dataclass or a factory function
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# The tree. Every field has a default and a one-line doc; `photogenic config show --docs` prints them.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldConfig:
    """The generated toy world: a haystack of image-caption pairs with a hidden appeal oracle."""

    seed: int = doc("Seed of the world generator; the same seed renders the same world.", 0, ge=0)
    num_samples: int = doc("Number of image-caption pairs in the haystack.", 20_000, ge=1)
    image_size: int = doc("Side of the square images in pixels.", 32, ge=16, le=1024)
    photogenic_rate: float = doc(
        "Fraction of the haystack rendered photogenic (paper: needles are rare).",
        0.02,
        ge=0,
        le=1,
    )
    caption_noise: float = doc(
        "Probability that a caption carries web-style noise (wrong or missing attributes, junk).", 0.3, ge=0, le=1
    )
    duplicate_rate: float = doc(
        "Probability that a sample repeats an earlier image, exactly or re-encoded (web haystacks do).",
        0.005,
        ge=0,
        le=1,
    )


@dataclass(frozen=True)
class DataConfig:
    """Ingestion into tar shards, and validation."""

    shard_max_samples: int = doc("Most samples in one tar shard.", 2_000, ge=1)
    shard_max_bytes: int = doc("Most bytes in one tar shard before a new one starts.", 256 * 2**20, ge=1024)
    workers: int = doc("Parallel workers that decode and hash images during ingestion.", 2, ge=1, le=256)
    near_duplicate_distance: int = doc(
        "Most bits two 192-bit perceptual hashes may differ by for near-duplicates (-1: off; exact always).",
        5,
        ge=-1,
        le=11,
    )
    min_caption_chars: int = doc("Shortest acceptable caption, in characters after stripping.", 3, ge=1)
    max_caption_chars: int = doc("Longest acceptable caption, in characters.", 512, ge=1)
    min_image_side: int = doc("Smallest acceptable image side in pixels.", 16, ge=1)
    max_aspect_ratio: float = doc("Largest acceptable ratio of the longer to the shorter image side.", 3.0, ge=1)
    max_failed_fraction: float = doc(
        "Validation fails the stage when more than this fraction of everything that entered ingestion "
        "was set aside (quarantined at ingestion or at validation).",
        0.05,
        ge=0,
        le=1,
    )
    max_image_bytes: int = doc(
        "Largest image file ingestion reads; a larger one is quarantined unread (its size is checked first).",
        64 * 2**20,
        ge=1,
    )

    def __post_init__(self) -> None:
        if self.min_caption_chars > self.max_caption_chars:
            raise ConfigError(
                f"config key 'data.min_caption_chars' ({self.min_caption_chars}) must not exceed "
                f"'data.max_caption_chars' ({self.max_caption_chars})"
            )


@dataclass(frozen=True)
class ModelConfig:
    """The latent diffusion model: autoencoder, denoiser and frozen text encoder."""

    latent_channels: Literal[4, 8, 16] = doc("Autoencoder latent channels (paper, 3.1: 16 beat 4).", 16)
    autoencoder_channels: tuple[int, ...] = doc(
        "Channels of the autoencoder's blocks; each block after the first halves the resolution.", (16, 32, 32)
    )
    unet_channels: tuple[int, ...] = doc(
        "Channels of the denoiser's U-Net blocks, from the highest resolution to the lowest.",
        (32, 64, 128),
    )
    attention_levels: int = doc(
        "U-Net levels, counted from the lowest resolution, with self- and cross-attention.", 2, ge=1, le=8
    )
    pooled_text: bool = doc(
        "Feed a pooled caption embedding into every residual block (diffusers' addition_embed_type='text').",
        True,
    )
    layers_per_block: int = doc("Residual layers per U-Net block.", 1, ge=1, le=8)
    attention_head_dim: int = doc(
        "Width of one attention head in the U-Net; a block has its channels / this many heads.", 32, ge=8
    )
    text_encoder: str = doc(
        "Frozen text encoder: 'minilm' (the offline MiniLM package) or a local/S3 path to a model.", "minilm"
    )
    max_caption_tokens: int = doc("Captions are truncated to this many tokens.", 24, ge=4, le=512)
    prediction_type: Literal["epsilon", "v_prediction"] = doc("What the denoiser predicts.", "v_prediction")


@dataclass(frozen=True)
class RecipeConfig:
    """One training recipe of the single trainer (autoencoder, pretrain or quality_tune)."""

    steps: int = doc("Optimizer steps to run (a cap when early stopping is on).", 1_000, ge=1)
    global_batch_size: int = doc("Samples per optimizer step across all ranks.", 64, ge=1)
    grad_accum_steps: int = doc("Micro-batches accumulated per optimizer step on each rank.", 1, ge=1)
    learning_rate: float = doc("Peak learning rate.", 1e-3, gt=0, le=1)
    warmup_steps: int = doc("Linear warm-up steps before the cosine decay.", 50, ge=0)
    weight_decay: float = doc("AdamW weight decay.", 0.01, ge=0)
    grad_clip: float = doc("Gradient norm clipping threshold (0 turns it off).", 1.0, ge=0)
    ema_decay: float = doc("EMA decay of the denoiser weights (0 turns EMA off).", 0.999, ge=0, lt=1)
    noise_offset: float = doc("Noise offset of the diffusion loss (paper: 0.02 pretraining, 0.1 QT).", 0.0, ge=0)
    caption_dropout: float = doc("Probability of an empty caption, for classifier-free guidance.", 0.1, ge=0, le=1)
    snr_gamma: float = doc(
        "Min-SNR loss weighting (Hang et al. 2023): cap each timestep's weight at this SNR (0: plain MSE).",
        0.0,
        ge=0,
    )
    checkpoint_every: int = doc("Steps between DeepSpeed checkpoints (0: only at the end).", 200, ge=0)
    keep_checkpoints: int = doc("Most checkpoints kept; older ones are deleted.", 2, ge=1)
    sample_every: int = doc("Steps between logged sample grids (0: only at the end).", 500, ge=0)
    validate_every: int = doc(
        "Steps between early-stopping validations on judged appeal of dev prompts (0: off; paper, 3.4).",
        0,
        ge=0,
    )
    patience: int = doc("Validations without improvement before training stops early.", 3, ge=1)
    rehearsal_fraction: float = doc(
        "Share of each batch from the rehearsal set (default: curated beside the data), to keep concepts; 0: off.",
        0.0,
        ge=0,
        lt=1,
    )
    guidance_preservation: float = doc(
        "Weight of a loss keeping the base model's guidance direction on rehearsal captions (0: off; ~1.3x time).",
        0.0,
        ge=0,
    )
    frozen_params: str = doc(
        "Regex (re.search) of parameter names that stay frozen; empty: all train (see DECODER_SIDE).",
        "",
    )
    compile: bool = doc(
        "torch.compile the denoiser's training step (DeepSpeed's engine.compile; needs a C++ compiler on CPU): "
        "0.86x the demo step on 2 CPU cores after about 2 minutes of compiling (bench/results/step_variants.md).",
        False,
    )


# The quality-tuning default of `frozen_params`, in diffusers' UNet2DConditionModel names (a Stable
# Diffusion U-Net has them too, but no `add_embedding`).
DECODER_SIDE = (
    r"^(conv_in|time_embedding|add_embedding|down_blocks|mid_block)\."  # these blocks
    r"|attn2\.to_[kv]\."  # and every cross-attention's keys and values of the caption
)


def _qt_recipe() -> RecipeConfig:
    # Paper, 3.4: batch 64, noise offset 0.1, at most 15K iterations, stopped early. The learning rate, the
    # frozen encoder side and the rehearsal share were chosen on the dev split (bench/results/recipe_dev.md,
    # bench/results/quality_tune.md hold the experiments).
    return RecipeConfig(
        steps=1_200,
        global_batch_size=64,
        learning_rate=3e-4,
        warmup_steps=20,
        noise_offset=0.1,
        caption_dropout=0.1,
        checkpoint_every=100,
        sample_every=0,
        validate_every=100,
        patience=4,
        rehearsal_fraction=0.05,
        frozen_params=DECODER_SIDE,
    )


@dataclass(frozen=True)
class TrainConfig:
    """The trainer: DeepSpeed settings shared by all recipes, and one section per recipe."""

    seed: int = doc("Seed for initialisation, noise and data order.", 0, ge=0)
    zero_stage: Literal[0, 1, 2, 3] = doc("DeepSpeed ZeRO stage (0: plain data parallel).", 2)
    zero_on_one_rank: bool = doc(
        "Keep ZeRO on with one rank (off: nothing to partition, ~15% of a CPU step saved).",
        False,
    )
    precision: Literal["auto", "fp32", "bf16"] = doc(
        "'auto': DeepSpeed bf16 on a GPU that has it, else fp32; 'bf16': that, or on CPU bf16 autocast "
        "(needs avx512_bf16 or AMX; it cost the demo's pretraining its shapes: bench/results/concept_accuracy.md).",
        "auto",
    )
    cpu_threads: int = doc(
        "Threads per rank on CPU: 0 every CPU the process may use (its affinity, a pod's CPU limit); N: N.",
        0,
        ge=0,
    )
    adapt_threads: bool = doc(
        "On CPU, try fewer or more threads as the machine's load changes (0.53x of idle throughput beside a "
        "busy core, against 0.32x), at the cost of bit-reproducibility: the sums' order follows the load.",
        False,
    )
    collective_timeout_s: float = doc(
        "Seconds a rank waits in a collective before its process group fails (not part of a run's identity).",
        600.0,
        gt=0,
    )
    autoencoder: RecipeConfig = doc(
        "Autoencoder training.",
        # bench/results/concept_accuracy.md: why 1,000 steps at 2e-3
        lambda: RecipeConfig(
            steps=1_000, learning_rate=2e-3, warmup_steps=20, caption_dropout=0.0, ema_decay=0.0, checkpoint_every=250
        ),
    )
    pretrain: RecipeConfig = doc(
        "Latent diffusion pretraining on the haystack (paper, 3.1: noise offset 0.02 in the last stage).",
        # bench/results/concept_accuracy.md: why 6,000 steps (the demo's latent needs 4,000)
        lambda: RecipeConfig(steps=6_000, noise_offset=0.02, snr_gamma=5.0, checkpoint_every=1_000, sample_every=1_500),
    )
    quality_tune: RecipeConfig = doc("Quality-tuning on the curated needles.", _qt_recipe)

    def __post_init__(self) -> None:
        if self.autoencoder.compile:
            raise ConfigError(
                "config key 'train.autoencoder.compile' cannot be true: the autoencoder's step calls encode and "
                "decode, which compiling misses"
            )


@dataclass(frozen=True)
class JudgesConfig:
    """Learned image judges (appeal, text overlay, shape, colour, background), trained on oracle-labelled
    renders of the world drawn with their own seeds: one set rates for curation (the paper's aesthetic
    and OCR models), a disjoint one judges evaluations."""

    # 8,000 renders left the evaluation judges' appeal agreement at 0.893, under the 0.9 validity bar;
    # 16,000 gave 0.911.
    train_samples: int = doc("Oracle-labelled renders each judge set trains on.", 16_000, ge=16)
    holdout_samples: int = doc("Held-out renders the judges are validated on.", 2_000, ge=16)
    photogenic_rate: float = doc(
        "Share of photogenic renders in the judges' sets (the haystack has few).", 0.3, ge=0, le=1
    )
    epochs: int = doc("Passes over the training renders.", 12, ge=1)
    batch_size: int = doc("Renders per optimizer step.", 128, ge=1)
    learning_rate: float = doc("AdamW learning rate.", 2e-3, gt=0, le=1)
    width: int = doc("Curation judges: channels of the network's first block (it doubles twice).", 32, ge=4)
    evaluation_width: int = doc("Evaluation judges: channels of the network's first block.", 24, ge=4)
    evaluation_blocks: int = doc(
        "Evaluation judges: convolutions at each resolution (curation's have 1): a different network.", 2, ge=1, le=4
    )
    curation_seed_offset: int = doc("World seed offset of the rating set the curation filters learn from.", 101)
    evaluation_seed_offset: int = doc("World seed offset of the judges' renders (never seen by curation).", 202)


@dataclass(frozen=True)
class CurateConfig:
    """The curation funnel: automatic filters that see only pixels and captions, then two review rounds
    (paper, section 3.3). On the toy world the reviewers are the oracle with rating noise (simulated)."""

    min_side: int = doc("Size filter: images with a shorter side are dropped.", 16, ge=1)
    max_aspect_ratio: float = doc("Aspect filter: longer side over shorter side.", 2.0, ge=1)
    max_text_probability: float = doc(
        "Text-overlay filter (the paper's OCR filter) on the rating-set model.", 0.5, ge=0, le=1
    )
    max_noise: float = doc(
        "Noise filter: most estimated pixel-noise sigma (Donoho's MAD of the finest Haar band).", 0.005, ge=0
    )
    min_sharpness: float = doc("Sharpness filter: least variance of the Laplacian of the luminance.", 4e-4, ge=0)
    max_clipped: float = doc("Exposure filter: largest share of pixels within 2% of black or white.", 0.7, ge=0, le=1)
    min_aesthetic_score: float = doc(
        "Aesthetic filter: least score of the predictor trained on the rating set.", 0.75, ge=0, le=1
    )
    min_caption_agreement: float = doc(
        "Caption-image agreement (the CLIP-score filter): least mean concept probability of the caption's concepts.",
        0.5,
        ge=0,
        le=1,
    )
    max_per_concept: int = doc("Concept balancing: most images kept per (shape, colour) pair, best first.", 40, ge=1)
    review: Literal["simulated", "export", "import"] = doc(
        "Review rounds: 'simulated' (noisy oracle; world only), 'export' (sheet for people, stop), 'import'.",
        "simulated",
    )
    generalist_min_rating: float = doc("Generalist round (recall): least rating a candidate needs.", 0.8, ge=0, le=1)
    specialist_min_rating: float = doc("Specialist round (precision): least rating to be kept.", 0.93, ge=0, le=1)
    generalist_noise: float = doc("Rating noise (std) of the simulated generalists.", 0.05, ge=0)
    specialist_noise: float = doc("Rating noise (std) of the simulated specialists.", 0.02, ge=0)
    target_size: int = doc("Most images the specialists keep for quality-tuning.", 400, ge=1)
    holdout_concepts: tuple[str, ...] = doc(
        "Concepts (shape or colour names) kept out of the QT set entirely, to measure generality.", ("star",)
    )
    seed: int = doc("Seed of the simulated reviewers' noise.", 0, ge=0)


@dataclass(frozen=True)
class EvaluateConfig:
    """Pairwise evaluation of two models on the same prompts and seeds (paper, section 4)."""

    # 2 seeds gave the held-out prompts 32 pairs: too few for the gate's wins-versus-losses test (a
    # held-out result of 28% / 22% on 2 seeds was 19% / 26% on 8). 8 give 768 pairs, 128 held out.
    seeds_per_prompt: int = doc("Images per prompt and model, with shared seeds.", 8, ge=1)
    sampling_steps: int = doc("Sampler steps per image.", 25, ge=1)
    guidance_scale: float = doc("Classifier-free guidance scale.", 3.0, ge=0)
    tie_margin: float = doc("Appeal scores closer than this count as a tie.", 0.02, ge=0)
    clip_score_margin: float = doc(
        "With real-image (CLIP) judges: CLIP scores closer than this count as a faithfulness tie.", 1.0, ge=0
    )
    bootstrap_samples: int = doc("Bootstrap resamples for the 95% intervals.", 2_000, ge=100)
    min_judge_agreement: float = doc(
        "Real-image judges and curation: below this agreement with the oracle on held-out renders a judge set "
        "is untrustworthy.",
        0.9,
        ge=0,
        le=1,
    )
    min_panel_agreement: float = doc(
        "World models: the learned judges are valid proxies when they agree with the panel this often on the "
        "evaluation's own pairs (appeal and faithfulness).",
        0.85,
        ge=0,
        le=1,
    )


@dataclass(frozen=True)
class PanelConfig:
    """The rater of record for world models: images explained as scenes, scored by the oracle, voted on by
    a simulated panel (paper, section 4: 5 raters for appeal, 3 for faithfulness, majority vote)."""

    appeal_raters: int = doc("Raters who vote on each pair's visual appeal (without the prompt).", 5, ge=1, le=99)
    faithfulness_raters: int = doc("Raters who vote on each pair's text faithfulness.", 3, ge=1, le=99)
    appeal_noise: float = doc("Std of one rater's perception of an image's appeal (oracle units, 0-1).", 0.02, ge=0)
    rater_tie_margin: float = doc("A rater votes tie when the two images' perceived appeal is this close.", 0.02, ge=0)
    faithfulness_error: float = doc(
        "Probability that a rater misjudges whether one image shows its prompt.", 0.05, ge=0, le=0.5
    )
    max_fit_error: float = doc(
        "Fit error (RMS) above which an image is a defect (~p98 of renders; bench/results/panel_validity.md).",
        0.3,
        gt=0,
    )
    min_explained: float = doc(
        "The panel's verdict is trustworthy when it explains at least this share of each model's images.",
        0.5,
        ge=0,
        le=1,
    )
    seed: int = doc("Seed of the raters' noise.", 0, ge=0)


@dataclass(frozen=True)
class StorageConfig:
    """Where stages keep their data. Credentials never live here: they come from the AWS environment."""

    root: str = doc(
        "Store URI for all stage outputs (local path or s3://bucket/prefix); '' = $PHOTOGENIC_STORE_ROOT, "
        "else <workspace>/store.",
        "",
    )
    multipart_threshold_mb: int = doc("Files larger than this are uploaded in parts.", 64, ge=5)
    multipart_chunk_mb: int = doc("Size of one part of a multipart upload.", 16, ge=5)
    max_attempts: int = doc("Attempts per S3 request under botocore's standard retry mode.", 5, ge=1, le=20)
    connect_timeout_s: float = doc("Seconds to wait for a connection to the S3 endpoint.", 5.0, gt=0)
    read_timeout_s: float = doc("Seconds to wait for an S3 response.", 60.0, gt=0)
    addressing_style: Literal["path", "virtual", "auto"] = doc(
        "S3 addressing style; 'path' works with in-cluster servers (SeaweedFS, MinIO) and AWS alike.", "path"
    )

    def __post_init__(self) -> None:
        problem = check_store_uri(self.root) if self.root else ""
        if problem:  # `s3:/bucket` or `s3://` would otherwise become a local folder named `s3:`
            raise ConfigError(f"config key 'storage.root' ({shown_uri(self.root)}) cannot be used: {problem}")


# A scheme-like head (`s3:`, `gs:`, `file:`): a path that starts so is a URI, well-formed or not.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# S3 bucket naming rules (3-63 characters: lower-case letters, digits, dots, hyphens; starts and ends alnum).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def shown_uri(uri: str) -> str:
    """A URI for an error message: quoted, or redacted where it carries a credential (`https://u:p@host`)."""
    from photogenic.redact import REDACTED, looks_secret_value

    return REDACTED if looks_secret_value(uri) else repr(uri)


def check_store_uri(uri: str) -> str:
    """Why `uri` is not a usable store URI (a plain path, `file:///path` or `s3://bucket[/prefix]`), or ''."""
    if not uri.strip():
        return "it is empty"
    if uri.startswith("s3://"):
        bucket = uri[len("s3://") :].split("/", 1)[0]
        if not bucket:
            return "it has no bucket: expected s3://bucket[/prefix]"
        if not _BUCKET.match(bucket) or ".." in bucket:
            return f"{bucket!r} is not a valid S3 bucket name (3-63 lower-case letters, digits, dots, hyphens)"
        return ""
    if uri.startswith("file://"):
        return "" if uri[len("file://") :].startswith("/") else "a file:// URI needs an absolute path: file:///path"
    if _SCHEME.match(uri):
        scheme = uri.split(":", 1)[0]
        if scheme.lower() == "s3":
            return "it is a malformed S3 URI: expected s3://bucket[/prefix]"
        return f"scheme {scheme!r} is not supported: use a local path or s3://bucket/prefix"
    if "\x00" in uri:
        return "it contains a NUL character"
    return ""


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking."""

    uri: str = doc("Tracking URI; '' = $MLFLOW_TRACKING_URI, else sqlite:///<workspace>/mlflow.db.", "")
    experiment: str = doc("MLflow experiment, one per pipeline.", "photogenic-quality-tuning")
    on_error: Literal["warn", "fail"] = doc("When the tracking store fails: keep going and report, or fail.", "warn")


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of a Photogenic run."""

    preset: str = doc("The named preset this config started from.", "demo")
    workspace: str = doc("Local folder for the store, the MLflow database and reports.", "./photogenic-workspace")
    world: WorldConfig = doc("The toy world.", WorldConfig)
    data: DataConfig = doc("Ingestion and validation.", DataConfig)
    model: ModelConfig = doc("The model.", ModelConfig)
    train: TrainConfig = doc("The trainer and its recipes.", TrainConfig)
    judges: JudgesConfig = doc("The learned judges.", JudgesConfig)
    curate: CurateConfig = doc("The curation funnel.", CurateConfig)
    evaluate: EvaluateConfig = doc("The evaluation.", EvaluateConfig)
    panel: PanelConfig = doc("The ground-truth rater panel for world models.", PanelConfig)
    storage: StorageConfig = doc("Storage.", StorageConfig)
    tracking: TrackingConfig = doc("Experiment tracking.", TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        from photogenic.config.loading import to_dict

        return to_dict(self)

    def fingerprint(self) -> str:
        from photogenic.config.loading import fingerprint

        return fingerprint(self)

    def store_root(self) -> str:
        """The store URI stage outputs go under: `storage.root`, else $PHOTOGENIC_STORE_ROOT (a cluster's
        ConfigMap sets it), else `<workspace>/store`."""
        if self.storage.root:
            return self.storage.root
        env = os.environ.get("PHOTOGENIC_STORE_ROOT", "")
        problem = check_store_uri(env) if env else ""
        if problem:
            raise ConfigError(
                f"environment variable PHOTOGENIC_STORE_ROOT ({shown_uri(env)}) cannot be used: {problem}"
            )
        return env or str(Path(self.workspace, "store"))
