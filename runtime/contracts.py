"""Graph contracts: the one source of truth for every graph's input/output names, dtypes and dims.

Export builds `input_names`, `output_names` and `dynamic_axes` from these specs; the runtime checks each loaded
graph against the spec stored in the bundle manifest and feeds tensors by name. Recurrent state follows one rule:
input `past_<name>` pairs with output `present_<name>`.

KV caches: the Thinker and Talker graphs read the cache of all earlier positions (`past_key_<i>`,
float32 `[1, past_seq, kv_heads, head_dim]`, upstream's layout) and return only the entries of the positions they
were given (`present_key_<i>`, `[1, seq, kv_heads, head_dim]`). The runtime writes those into a cache preallocated
to the context limit, so no step copies or reallocates the whole cache on the Python side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .config import ModelConfig
from .errors import BundleError

# Every symbolic dim a contract may use.
DIMS = ("seq", "past_seq", "frames", "samples")


class ContractError(BundleError):
    """A graph's inputs or outputs differ from its contract."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64", "bool"
    dims: tuple[str | int, ...]  # ints are fixed; strings are names from DIMS


@dataclass(frozen=True)
class GraphSpec:
    graph: str
    version: int  # bump on any I/O change
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    atol: float  # fp32 export parity tolerance against the torch module

    def state_pairs(self) -> list[tuple[str, str]]:
        """(input, output) names of recurrent state tensors, by the past_/present_ rule."""
        outs = {o.name for o in self.outputs}
        return [(i.name, "present_" + i.name[5:]) for i in self.inputs
                if i.name.startswith("past_") and "present_" + i.name[5:] in outs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {}
        for t in self.inputs + self.outputs:
            named = {k: d for k, d in enumerate(t.dims) if isinstance(d, str)}
            if named:
                axes[t.name] = named
        return axes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphSpec:
        def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"])) for t in items)
        return cls(d["graph"], int(d["version"]), tensors(d["inputs"]), tensors(d["outputs"]), float(d["atol"]))


def _kv(prefix: str, n_layers: int, seq: str, kv_heads: int, head_dim: int) -> tuple[TensorSpec, ...]:
    out: list[TensorSpec] = []
    for i in range(n_layers):
        out.append(TensorSpec(f"{prefix}_key_{i}", "float32", (1, seq, kv_heads, head_dim)))
        out.append(TensorSpec(f"{prefix}_value_{i}", "float32", (1, seq, kv_heads, head_dim)))
    return tuple(out)


def thinker_spec(cfg: ModelConfig) -> GraphSpec:
    """Thinker over `seq` new positions after `past_seq` cached ones (prefill: seq = prompt; decode: seq = 1).

    `feature_embeds` replace the token embedding where `feature_mask` is true (speech/image features at their
    placeholder positions, prefill only; all false for text). Outputs the last position's logits, the
    bridge-layer hidden state of every new position (what the Talker reads), and the new KV entries.
    """
    L, H, KV, D = cfg.num_hidden_layers, cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim
    return GraphSpec(
        graph="thinker",
        version=1,
        inputs=(
            TensorSpec("input_ids", "int64", (1, "seq")),
            TensorSpec("feature_embeds", "float32", (1, "seq", H)),
            TensorSpec("feature_mask", "bool", (1, "seq")),
        ) + _kv("past", L, "past_seq", KV, D),
        outputs=(
            TensorSpec("logits", "float32", (1, cfg.vocab_size)),
            TensorSpec("bridge", "float32", (1, "seq", H)),
        ) + _kv("present", L, "seq", KV, D),
        atol=1e-4,
    )


def talker_spec(cfg: ModelConfig) -> GraphSpec:
    """Talker over `seq` new positions: bridge states + the 8-codebook code columns -> 8 codebook logits.

    `spk_mask` marks positions whose input embedding is replaced by the projected speaker embedding
    (upstream: codebook-0 id == spk code, and only when a speaker embedding is given; the runtime decides).
    Outputs the last position's logits for every codebook and the new KV entries.
    """
    L, KV, D = cfg.num_talker_hidden_layers, cfg.talker_num_key_value_heads, cfg.talker_head_dim
    return GraphSpec(
        graph="talker",
        version=1,
        inputs=(
            TensorSpec("bridge", "float32", (1, "seq", cfg.hidden_size)),
            TensorSpec("codes", "int64", (1, cfg.num_codebooks, "seq")),
            TensorSpec("spk_mask", "bool", (1, "seq")),
            TensorSpec("spk_emb", "float32", (1, cfg.spk_emb_size)),
        ) + _kv("past", L, "past_seq", KV, D),
        outputs=(
            TensorSpec("audio_logits", "float32", (1, cfg.num_codebooks, cfg.audio_vocab_size)),
        ) + _kv("present", L, "seq", KV, D),
        atol=1e-4,
    )


@dataclass(frozen=True)
class MimiDims:
    """What the runtime needs to drive the streaming Mimi decoder graph; the exporter derives it from MimiConfig.

    State per frame: one KV ring of `kv_window` slots per transformer layer (the decoder transformer's sliding
    window, so it never grows with the answer), one left-context buffer per causal conv and one overlap tail per
    transposed conv (`conv_states`: (channels, length) each, in graph order), and a position counter.
    """

    num_layers: int  # decoder transformer layers
    num_heads: int
    head_dim: int
    kv_window: int  # ring slots per layer = MimiConfig.sliding_window (transformer steps)
    conv_states: tuple[tuple[int, int], ...]
    num_codebooks: int = 8  # codebooks the Talker predicts (Mimi has 32; upstream decodes the first 8)
    codebook_size: int = 2048
    frame_samples: int = 1920  # samples per 12.5 Hz code frame
    sample_rate: int = 24000
    steps_per_frame: int = 2  # decoder transformer steps per code frame (12.5 Hz -> 25 Hz)

    @property
    def kv_shape(self) -> tuple[int, int, int, int]:
        return (1, self.num_heads, self.kv_window, self.head_dim)


    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conv_states"] = [list(s) for s in self.conv_states]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MimiDims:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        missing = sorted({"num_layers", "num_heads", "head_dim", "kv_window", "conv_states"} - set(d))
        if unknown or missing:
            raise ValueError(f"Mimi dims with unknown keys {unknown} / missing keys {missing}; "
                             f"this bundle was written by another version: re-export it")
        return cls(**{**d, "conv_states": tuple((int(c), int(n)) for c, n in d["conv_states"])})


def mimi_decoder_spec(dims: MimiDims, frames: int | None = None) -> GraphSpec:
    """`frames` consecutive Mimi code frames -> `frames` x `frame_samples` of 24 kHz audio, all state explicit and
    fixed-size; any number of frames per call gives the audio of one frame per call. `frames`: None leaves it
    symbolic (1 to kv_window / steps_per_frame per call; the weights are read once per call); a static bundle,
    whose graphs have no symbolic dimension, fixes it at 1.

    `position` is the transformer position of the call's first step (steps_per_frame x frames decoded so far);
    ring slot s of `past_key_<i>`/`past_value_<i>` holds the latest earlier position p with p % kv_window == s
    (empty while p < 0). The graph returns only the new entries (`present_key_<i>`: one per step, `seq` =
    steps_per_frame x frames); the runtime writes them into the ring at (position + t) % kv_window. Conv states
    are replaced whole (`present_conv_<j>`). Version 2: `frames` was fixed at 1 in version 1.
    """
    kv: list[TensorSpec] = []
    new_kv: list[TensorSpec] = []
    steps = "seq" if frames is None else frames * dims.steps_per_frame
    for i in range(dims.num_layers):
        for kind in ("key", "value"):
            kv.append(TensorSpec(f"past_{kind}_{i}", "float32", dims.kv_shape))
            new_kv.append(TensorSpec(f"present_{kind}_{i}", "float32", (1, dims.num_heads, steps, dims.head_dim)))
    conv = [(f"conv_{j}", (1, c, n)) for j, (c, n) in enumerate(dims.conv_states)]
    return GraphSpec(
        graph="mimi_decoder",
        version=2,
        inputs=(
            TensorSpec("codes", "int64", (1, dims.num_codebooks, "frames" if frames is None else frames)),
            TensorSpec("position", "int64", (1,)),
            *kv,
            *(TensorSpec("past_" + n, "float32", s) for n, s in conv),
        ),
        outputs=(
            TensorSpec("audio", "float32", (1, 1, "samples" if frames is None else frames * dims.frame_samples)),
            *new_kv,
            *(TensorSpec("present_" + n, "float32", s) for n, s in conv),
        ),
        atol=1e-4,
    )


def audio_projector_spec(cfg: ModelConfig) -> GraphSpec:
    """Speech encoder output (SenseVoice tp_norm) -> Thinker embeddings for the `<|audio_pad|>` positions.

    A graph of its own: its weights come from the MiniMind-O checkpoint while the encoder's come from the
    SenseVoice folder, and the un-projected encoder output also feeds the CTC transcript.
    """
    return GraphSpec(
        graph="audio_projector",
        version=1,
        inputs=(TensorSpec("audio_features", "float32", (1, "seq", cfg.audio_hidden_size)),),
        outputs=(TensorSpec("audio_embeds", "float32", (1, "seq", cfg.hidden_size)),),
        atol=1e-4,
    )


def vision_spec(cfg: ModelConfig, image_size: int = 256) -> GraphSpec:
    """SigLIP vision tower + vision projector, one graph: a preprocessed image -> the Thinker embeddings written at
    the `cfg.image_token_len` `<|image_pad|>` positions (upstream: `vision_proj(last_hidden_state)`, post_layernorm
    included, pooling head unused). Fixed shapes: one image, always the same patch grid."""
    return GraphSpec(
        graph="vision",
        version=1,
        inputs=(TensorSpec("pixel_values", "float32", (1, 3, image_size, image_size)),),
        outputs=(TensorSpec("image_embeds", "float32", (1, cfg.image_token_len, cfg.hidden_size)),),
        atol=1e-4,
    )


def sensevoice_spec(vocab_size: int, output_size: int = 512, feature_dim: int = 560) -> GraphSpec:
    """SenseVoice-Small encoder over `frames` LFR feature rows (60 ms each), with its CTC head.

    `mask` is true for real rows (false rows are padding: no real row attends to them). `encoder_out` is the
    `tp_norm` output, what upstream feeds the audio projector; `ctc_logits` are the CTC head's raw logits (greedy
    decoding needs only their argmax). Both keep one row per input row.
    """
    return GraphSpec(
        graph="sensevoice",
        version=1,
        inputs=(
            TensorSpec("features", "float32", (1, "frames", feature_dim)),
            TensorSpec("mask", "bool", (1, "frames")),
        ),
        outputs=(
            TensorSpec("encoder_out", "float32", (1, "frames", output_size)),
            TensorSpec("ctc_logits", "float32", (1, "frames", vocab_size)),
        ),
        atol=1e-4,
    )


def mimi_encoder_spec(num_codebooks: int = 8) -> GraphSpec:
    """Mimi encoder over a whole clip (voice cloning): 24 kHz audio [1, 1, samples] -> the first `num_codebooks`
    RVQ codes [1, num_codebooks, frames], frames = ceil(samples / 1920) (the clip is zero-padded to whole frames,
    as `MimiModel.encode` does). Codes are compared exactly, so atol is 0."""
    return GraphSpec(
        graph="mimi_encoder",
        version=1,
        inputs=(TensorSpec("audio", "float32", (1, 1, "samples")),),
        outputs=(TensorSpec("codes", "int64", (1, num_codebooks, "frames")),),
        atol=0.0,
    )


def campplus_spec(feature_dim: int = 80, embedding_size: int = 192) -> GraphSpec:
    """CAM++ speaker encoder: mean-normalised log-mel features [1, frames, 80] -> raw speaker embedding [1, 192]
    (what the Talker's `spk_proj` reads)."""
    return GraphSpec(
        graph="campplus",
        version=1,
        inputs=(TensorSpec("features", "float32", (1, "frames", feature_dim)),),
        outputs=(TensorSpec("embedding", "float32", (1, embedding_size)),),
        atol=1e-4,
    )


@dataclass(frozen=True)
class StaticShape:
    """A static bundle's fixed sizes: the KV buffer's capacity and the prefill chunk length (manifest `static`).

    Runtimes for NPUs and mobile accelerators compile a graph for one set of shapes, so the static Thinker/Talker
    take the whole `context`-slot buffer and new positions in fixed chunks; `static_spec` derives their contracts
    from the dynamic ones.
    """

    context: int
    prefill_chunk: int

    def __post_init__(self) -> None:
        if self.context < 16:
            raise ValueError(f"static context must be at least 16 positions, got {self.context}")
        if not 1 <= self.prefill_chunk <= self.context:
            raise ValueError(f"prefill chunk must be in [1, context={self.context}], got {self.prefill_chunk}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StaticShape:
        return cls(int(d["context"]), int(d["prefill_chunk"]))

    def specs(self, cfg: ModelConfig) -> dict[str, GraphSpec]:
        """`thinker`/`talker` decode one position per call; `*_prefill` take `prefill_chunk` (absent when 1)."""
        specs = {}
        for dynamic in (thinker_spec(cfg), talker_spec(cfg)):
            specs[dynamic.graph] = static_spec(dynamic, self.context, 1, dynamic.graph)
            if self.prefill_chunk > 1:
                name = dynamic.graph + PREFILL_SUFFIX
                specs[name] = static_spec(dynamic, self.context, self.prefill_chunk, name)
        return specs


PREFILL_SUFFIX = "_prefill"


def static_spec(spec: GraphSpec, context: int, chunk: int, graph: str) -> GraphSpec:
    """The fixed-shape form of a Thinker/Talker contract: `seq` -> `chunk`, plus

    - `position` int64 [1]: cache slots already filled (the chunk's first absolute position);
    - `length` int64 [1]: real positions in the chunk (1..chunk); the rest is padding (any valid ids/codes,
      features off). Last-position outputs (logits) are taken at `length - 1`; `bridge` has `chunk` rows of which
      the caller keeps the first `length`;
    - `past_key/value_<i>`: the whole cache buffer [1, kv_heads, context, head_dim] (heads first, the layout of
      onnxruntime's GroupQueryAttention), and `present_key/value_<i>` the same buffer with the chunk's `chunk` rows
      written at slots position..position+chunk-1 (padding rows included; the next call overwrites them).

    Bind each `present_*` to its `past_*` buffer (onnxruntime IO binding) and the graph writes the new rows in
    place and reads only slots < position + chunk: a step costs what the dynamic graph's does, whatever the
    context. Unbound, `present_*` is a new buffer to feed next time (a copy of the whole cache per call).
    Version 2: version 1 read a [1, context, kv_heads, head_dim] buffer in full every call and returned the new
    rows only.
    """
    fixed = {"seq": chunk}

    def fix(t: TensorSpec) -> TensorSpec:
        if t.name.startswith(("past_", "present_")):  # [1, seq|past_seq, kv_heads, head_dim] -> whole buffer
            return TensorSpec(t.name, t.dtype, (1, t.dims[2], context, t.dims[3]))
        return TensorSpec(t.name, t.dtype, tuple(fixed[d] if isinstance(d, str) else d for d in t.dims))

    past = tuple(fix(t) for t in spec.inputs if t.name.startswith("past_"))
    rest = tuple(fix(t) for t in spec.inputs if not t.name.startswith("past_"))
    where = (TensorSpec("position", "int64", (1,)), TensorSpec("length", "int64", (1,)))
    return GraphSpec(graph, STATIC_VERSION, rest + where + past, tuple(fix(t) for t in spec.outputs), spec.atol)


STATIC_VERSION = 2  # the static Thinker/Talker contracts (see static_spec)


VAD_CHUNK = 512  # samples per Silero VAD (v5+) step at 16 kHz
VAD_CONTEXT = 64  # samples of the previous chunk prepended to each step


def silero_vad_spec() -> GraphSpec:
    """The `silero-vad` package's `silero_vad.onnx` (v5+, 16 kHz) with contract names put on at export: one 32 ms
    chunk (after 64 samples of the previous chunk as context) -> speech probability; the recurrent state is explicit.
    The file is copied, not re-exported: these are the released weights. The sample axis stays symbolic: the file's
    internal shape annotations do not survive pinning it (runtime feeds VAD_CONTEXT + VAD_CHUNK)."""
    return GraphSpec(
        graph="vad",
        version=1,
        inputs=(
            TensorSpec("audio", "float32", (1, "samples")),
            TensorSpec("past_state", "float32", (2, 1, 128)),
            TensorSpec("sr", "int64", ()),
        ),
        outputs=(
            TensorSpec("speech_prob", "float32", (1, 1)),
            TensorSpec("present_state", "float32", (2, 1, 128)),
        ),
        atol=0.0,
    )
