"""Images in the graph: encoded bytes (PNG, JPEG) -> uint8 [H, W, 3] RGB, and a guard for pixels.

    decode_image_graph(opset)    image_bytes uint8 [n] (a whole PNG or JPEG file) -> image uint8 [H, W, 3]
    pixel_guard_graph(opset)     image uint8 [H, W, 3] -> the same, or a clean error when H or W is 0

Both are ONNX models meant for Recipe.onnx_preprocessor (merged in front of the captured model,
whose input is `image`). Bad input never crashes the runtime: it raises an ordinary ONNX Runtime
error from a node named "input error: <what is wrong and how to fix it>", which
exportable.runtime turns into a one-line InputError (Java and Go see the same text).

The decoder is onnxruntime-extensions' DecodeImage (domain com.microsoft.extensions, not
ai.onnx.contrib; 0.15.2). What it does, measured:
- PNG via libpng 1.6.37, JPEG via IJG libjpeg 9e (not libjpeg-turbo). Output is BGR unless
  `color_space="rgb"`, which 0.15.2 honours and 0.13.0 (the Java package) silently ignores; the
  graph asks for RGB and checks what it got by decoding a 1 x 1 red PNG the same way. Never use
  the default BGR mode on a grayscale JPEG: 0.15.2 then swaps "channels" of its 1-channel output
  three bytes at a time over 3x the buffer (a heap overflow; measured: scrambled pixels and bytes
  from past the end). Grayscale JPEGs come out with 1 channel (0.15.2) or 3 (0.13.0): repeated
  to 3, as PIL's convert("RGB") does.
- Against PIL (Image.open(...).convert("RGB")): PNG is identical, except interlaced PNGs (rows
  come out in Adam7 pass order) and 16-bit grayscale (PIL clips to 255, libpng keeps the high
  byte): both are refused here. JPEG without chroma subsampling (4:4:4, and grayscale) differs by
  at most 1 in a few pixels. JPEG with subsampled chroma (4:2:0, 4:2:2: most cameras, and PIL's
  default) differs by up to ~100 at sharp colour edges (mean ~1.3): libjpeg 9 upsamples chroma
  with a scaled IDCT, libjpeg-turbo with a triangle filter. No graph-side fix exists; see
  docs/image-preprocessing.md.
- Its JPEG path uses libjpeg's default error handler, which calls exit(): bytes that are neither
  JPEG nor PNG, or a JPEG with a bad header, END THE WHOLE PROCESS (measured: exit status 1, no
  exception), and a JPEG truncated inside its image data makes it loop forever. Of 87 damaged
  JPEG/PNG files, 36 ended the process. Its PNG path is safe (setjmp). So JPEG bytes reach
  DecodeImage only after `_jpeg_checks` has walked the file's marker segments the way libjpeg
  reads them and checked the header fields libjpeg treats as fatal errors (list there). That is a
  validator written against libjpeg's rules, not a proof: about 6,400 fuzzed files (truncated,
  bytes flipped in the headers and anywhere, chunks cut out or inserted), run through 0.15.2 and
  0.13.0, ended in a result or an ordinary error every time. Files PIL opens but these checks refuse
  (arithmetic coding, 12-bit, CMYK, lossless) get an "unsupported JPEG" error.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..onnx_builder import EXTENSIONS, GraphBuilder, Names

MAX_SIDE = 16384  # pixels a side: libjpeg's own limit is 65500; newer DecodeImage builds refuse > 16384
MAX_PIXELS = 2 * 89_478_485  # PIL raises DecompressionBombError above twice its MAX_IMAGE_PIXELS
INPUT_ERROR = "input error: "  # node-name prefix exportable.runtime reports as the user's mistake
IMAGE_TYPE = [(TensorProto.UINT8, 3)]  # DecodeImage gives [H, W, channels]; onnx cannot infer a custom op

# Why an encoded image is refused, by code (0: accepted). The text becomes the error message.
REASONS = {
    1: "image_bytes is empty or too short to be an image file; pass the whole PNG or JPEG file's bytes",
    2: "image_bytes is not a PNG or JPEG file (no PNG or JPEG signature at its start); "
       "pass the bytes of a .png or .jpg file, or decode other formats yourself and use --inputs pixels",
    3: "image_bytes is an interlaced or 16-bit grayscale PNG, which the in-graph decoder cannot read "
       "like PIL; re-save it as a non-interlaced 8-bit PNG",
    4: "image_bytes is a truncated or corrupt JPEG (its marker segments do not lead to an end-of-image "
       "marker); pass the complete file",
    5: "image_bytes is a JPEG kind the in-graph decoder does not read (it takes 8-bit Huffman-coded "
       "baseline or progressive JPEGs with 1 or 3 components: not CMYK, 12-bit, lossless or arithmetic-coded); "
       "re-save it as a standard JPEG or PNG",
    6: "image_bytes is a corrupt JPEG (an invalid frame, table or scan header); pass an intact file",
    7: f"image_bytes holds an image over {MAX_SIDE} pixels a side or {MAX_PIXELS} pixels in all; "
       "shrink it first",
    8: "image_bytes is a corrupt PNG (its first chunk is not an IHDR header); pass an intact file",
}
EMPTY_IMAGE = "image is empty (0 rows or 0 columns); pass an RGB image of at least 1 x 1 pixels"


# --- a small expression builder: one ONNX graph, values as names, numpy-like operators -----------------
class _V:
    """A graph value. Arithmetic and comparisons add nodes; ints and bools become constants."""

    def __init__(self, g: "_Graph", name: str):
        self.g, self.name = g, name

    def _bin(self, op, other, swap=False):
        other = self.g.lift(other)
        a, b = (other, self) if swap else (self, other)
        return self.g.op(op, a, b)

    __add__ = lambda s, o: s._bin("Add", o)
    __radd__ = lambda s, o: s._bin("Add", o, True)
    __sub__ = lambda s, o: s._bin("Sub", o)
    __rsub__ = lambda s, o: s._bin("Sub", o, True)
    __mul__ = lambda s, o: s._bin("Mul", o)
    __rmul__ = lambda s, o: s._bin("Mul", o, True)
    __floordiv__ = lambda s, o: s._bin("Div", o)  # integer Div truncates: callers keep values >= 0
    __mod__ = lambda s, o: s._bin("Mod", o)
    __lt__ = lambda s, o: s._bin("Less", o)
    __le__ = lambda s, o: s._bin("LessOrEqual", o)
    __gt__ = lambda s, o: s._bin("Greater", o)
    __ge__ = lambda s, o: s._bin("GreaterOrEqual", o)
    __eq__ = lambda s, o: s._bin("Equal", o)  # type: ignore[assignment]
    __ne__ = lambda s, o: s.g.op("Not", s._bin("Equal", o))  # type: ignore[assignment]
    __and__ = lambda s, o: s._bin("And", o)
    __or__ = lambda s, o: s._bin("Or", o)
    __invert__ = lambda s: s.g.op("Not", s)
    __hash__ = None  # type: ignore[assignment]

    def int(self) -> "_V":
        return self.g.op("Cast", self, to=TensorProto.INT64)

    def any(self) -> "_V":
        """bool tensor -> bool scalar (False when empty)."""
        return self.g.op("ReduceSum", self.int(), keepdims=0) > 0


class _Graph:
    """Nodes of one graph or subgraph, on a GraphBuilder whose names (prefix + hint + a counter)
    and domains its subgraphs share, so the same build gives the same bytes (no global state)."""

    def __init__(self, core: GraphBuilder):
        self.core = core
        self._consts: dict = {}  # one Constant node per distinct value in this graph

    def child(self) -> "_Graph":
        return _Graph(self.core.child())

    def fresh(self, hint: str) -> str:
        return self.core.names.fresh(hint)

    def lift(self, x) -> _V:
        if isinstance(x, _V):
            return x
        if isinstance(x, bool):
            return self.const(np.array(x))
        if isinstance(x, (int, np.integer)):
            return self.const(np.array(x, dtype=np.int64))
        return self.const(np.asarray(x))

    def const(self, value: np.ndarray) -> _V:
        value = np.asarray(value)
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self._consts:
            self._consts[key] = _V(self, self.core.constant(self.fresh("const"), value))
        return self._consts[key]

    def op(self, op_type: str, *inputs, outputs: int = 1, name: str | None = None, domain: str = "",
           out: str | None = None, types=None, **attrs):
        ins = [self.lift(i).name if i is not None else "" for i in inputs]
        outs = [out] if out else [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.core.op(op_type, ins, outs, domain=domain, types=types, name=name, **attrs)
        vals = [_V(self, o) for o in outs]
        return vals[0] if outputs == 1 else vals

    def where(self, cond, a, b) -> _V:
        return self.op("Where", cond, a, b)

    def graph(self, name: str, inputs, outputs) -> onnx.GraphProto:
        return self.core.graph(name, inputs, outputs)


def _value(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _model(g: _Graph, name: str, inputs, outputs, doc: str) -> onnx.ModelProto:
    model = g.core.model(name, inputs, outputs, doc_string=doc)
    onnx.checker.check_model(model)
    return model


def _raise_graph(g: _Graph, reason: _V, message: str) -> onnx.GraphProto:
    """A subgraph that raises: a Reshape of a 1-element tensor to 2 elements, named after the
    message (ONNX Runtime's error text names the failing node). It depends on `reason`, a value
    computed from the input, so no constant folding can run it at load time. Its output (never
    produced) is typed like the accepted branch's: uint8 of rank 3."""
    sub = g.child()
    failing = sub.op("Reshape", sub.op("Unsqueeze", reason, np.array([0])), np.array([2]), name=INPUT_ERROR + message)
    out = sub.op("Reshape", sub.op("Cast", failing, to=TensorProto.UINT8), np.array([1, 1, 2]))
    return sub.graph(sub.fresh("raise"), [], [_value(out.name, TensorProto.UINT8, None)])


def _error_graph(g: _Graph, reason: _V, messages: dict) -> onnx.GraphProto:
    """A subgraph that raises the message of code `reason` (a chain of If on the codes)."""
    codes = sorted(messages)
    if len(codes) == 1:
        return _raise_graph(g, reason, messages[codes[0]])
    sub = g.child()
    rest = {c: messages[c] for c in codes[1:]}
    out = sub.op("If", sub.op("Equal", reason, codes[0]), then_branch=_raise_graph(sub, reason, messages[codes[0]]),
                 else_branch=_error_graph(sub, reason, rest))
    return sub.graph(sub.fresh("errors"), [], [_value(out.name, TensorProto.UINT8, None)])


# --- PNG ------------------------------------------------------------------------------------------------
PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10]
RED_PIXEL_PNG = bytes([  # a 1 x 1 PNG of RGB (255, 0, 0)
    137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0, 144, 119,
    83, 222, 0, 0, 0, 12, 73, 68, 65, 84, 120, 218, 99, 248, 207, 192, 0, 0, 3, 1, 1, 0, 247, 3, 65, 67, 0, 0, 0, 0,
    73, 69, 78, 68, 174, 66, 96, 130])


def _be(g: _Graph, at, start: int, count: int) -> _V:
    value = g.lift(0)
    for i in range(count):
        value = value * 256 + at(start + i)
    return value


def _png_checks(g: _Graph, at, n: _V):
    """-> (is_png, corrupt, unsupported, too_large). libpng itself rejects corrupt data safely (its
    errors longjmp back into DecodeImage, which returns an error), so only what it reads
    *differently* from PIL, and sizes, are checked here."""
    is_png = n >= 8
    for i, byte in enumerate(PNG_SIGNATURE):
        is_png = is_png & (at(i) == byte)
    corrupt = (n < 33) | (_be(g, at, 12, 4) != 0x49484452)  # the first chunk must be IHDR
    width, height = _be(g, at, 16, 4), _be(g, at, 20, 4)
    depth, color, interlace = at(24), at(25), at(28)
    unsupported = (interlace != 0) | ((depth == 16) & (color == 0))
    too_large = (width > MAX_SIDE) | (height > MAX_SIDE) | (width * height > MAX_PIXELS)
    return is_png, corrupt, unsupported, too_large


# --- JPEG -----------------------------------------------------------------------------------------------
SOF_SUPPORTED = (0xC0, 0xC1, 0xC2)  # baseline, extended sequential, progressive (Huffman)
SOF_UNSUPPORTED = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)  # lossless, hierarchical, arithmetic
DHT, DQT, DRI, SOS, EOI, DNL, COM = 0xC4, 0xDB, 0xDD, 0xDA, 0xD9, 0xDC, 0xFE


def _jpeg_checks(g: _Graph, b: _V, bp: _V, at, n: _V, is_jpeg: _V):
    """-> (structure_ok, unsupported, too_large, corrupt) for a JPEG, mirroring libjpeg 9e:

    Walk (jdmarker.c's next_marker/read_markers): from SOI, each marker's segment length must stay
    inside the data; the next marker is the first 0xFF followed by a byte other than 0x00 (stuffing),
    0xFF (fill), 0x01 or 0xD0-0xD7 (standalone: TEM, RSTn), searched from the segment's end (after
    an SOS: from its header's end, i.e. across the entropy-coded data, which is how libjpeg finds
    where a scan ends). The walk must reach EOI: otherwise libjpeg would ask for more data than
    there is, and DecodeImage loops forever or exits.

    Fatal-error checks (each is an ERREXIT in libjpeg 9e that would exit the process):
    - markers: only SOF0-2, DHT, DQT, DRI, SOS, DNL, APPn, COM, EOI (others: JERR_UNKNOWN_MARKER,
      JERR_SOF_UNSUPPORTED, a second SOI: JERR_SOI_DUPLICATE); one SOF, before the first SOS.
    - SOF: length 8 + 3 * components; precision 8; height, width >= 1 (and our size limits);
      1 or 3 components with distinct ids (not the libjpeg-9-only "big gamut" id sets); sampling
      factors 1-4 dividing the largest (JERR_FRACT_SAMPLE_NOTIMPL); quantisation table ids < 4.
    - DHT: per table: class 0-1, id 0-3, <= 256 codes fitting the segment, code lengths that fit
      (libjpeg's Kraft check: no all-ones code), DC symbols <= 15; the segment used up exactly.
    - DQT: per table: precision 0-1, id 0-3, 64 entries fitting; the segment used up exactly.
    - DRI: length 4.
    - SOS: 1-4 components, length 6 + 2 * components, each a distinct frame component; the Huffman
      tables it needs (sequential: DC and AC; progressive: DC for a first DC scan, AC for AC scans)
      and each component's quantisation table defined by an earlier segment; <= 10 blocks per MCU
      when interleaved; progressive: Ss/Se/Ah/Al valid (JERR_BAD_PROGRESSION); extended
      sequential: first scan Se = 63 (libjpeg 9's block-size rule); a sequential file whose first
      scan holds every component has no second scan (JERR_EOI_EXPECTED).
    Corrupt entropy-coded data is not fatal in libjpeg (a warning, then gray blocks).
    """
    # Marker positions: 0xFF followed by a marker byte (not stuffing, fill, TEM or RSTn).
    following = g.op("Slice", bp, g.lift(np.array([1])), g.op("Unsqueeze", n + 1, g.lift(np.array([0]))))
    marker = (b == 255) & (following != 0) & (following != 255) & (following != 1) & \
             ((following < 0xD0) | (following > 0xD7))
    positions = g.op("Reshape", g.op("NonZero", marker), g.lift(np.array([-1])))
    sentinel = g.op("Unsqueeze", n + 100, g.lift(np.array([0])))
    positions_ext = g.op("Concat", positions, sentinel, axis=0)

    def next_marker(sub: _Graph, q: _V) -> _V:
        count = sub.op("ReduceSum", sub.op("Cast", sub.op("Less", positions, q), to=TensorProto.INT64), keepdims=0)
        return sub.op("Gather", positions_ext, count, axis=0)

    first = next_marker(g, g.lift(2))
    markers = g.op("ReduceSum", marker.int(), keepdims=0)
    trips = g.where(is_jpeg, markers + 1, g.lift(0))
    status0 = g.where(first < n, g.lift(0), g.lift(2))  # 0 walking, 1 reached EOI, 2 broken

    body = g.child()
    it, cond_in, p, status = (body.fresh(x) for x in ("iter", "cond", "p", "status"))
    pv = _V(body, p)
    code = body.op("Gather", bp, body.op("Clip", pv + 1, body.lift(0), n + 63), axis=0)
    length = body.op("Gather", bp, body.op("Clip", pv + 2, body.lift(0), n + 63), axis=0) * 256 + \
        body.op("Gather", bp, body.op("Clip", pv + 3, body.lift(0), n + 63), axis=0)
    is_eoi = code == EOI
    segment_ok = (length >= 2) & (pv + 2 + length <= n)
    nxt = next_marker(body, pv + 2 + length)
    new_status = body.where(is_eoi, body.lift(1), body.where(segment_ok & (nxt < n), body.lift(0), body.lift(2)))
    outs = [body.op("Equal", new_status, body.lift(0)), body.op("Identity", nxt), body.op("Identity", new_status),
            body.op("Identity", pv), body.op("Identity", code), body.op("Identity", length)]
    scalar = lambda v, t: _value(v.name, t, [])  # noqa: E731
    body_graph = body.graph("jpeg_walk", [_value(it, TensorProto.INT64, []), _value(cond_in, TensorProto.BOOL, []),
                                          _value(p, TensorProto.INT64, []), _value(status, TensorProto.INT64, [])],
                            [scalar(outs[0], TensorProto.BOOL)] + [scalar(o, TensorProto.INT64) for o in outs[1:]])
    _, final_status, seg_pos, seg_code, seg_len = g.op("Loop", trips, status0 == 0, first, status0, outputs=5,
                                                     body=body_graph)
    structure_ok = final_status == 1

    # One dummy row so that no reduction below sees an empty tensor.
    pad = lambda v: g.op("Concat", v, g.lift(np.array([0])), axis=0)  # noqa: E731
    pos, mk, ln = pad(seg_pos), pad(seg_code), pad(seg_len)
    rows = g.op("Shape", pos)
    valid = g.op("Range", g.lift(0), g.op("Squeeze", rows, g.lift(np.array([0]))), g.lift(1)) < \
        g.op("Squeeze", g.op("Shape", seg_pos), g.lift(np.array([0])))
    valid = valid & (mk != EOI)

    def is_any(*codes):
        result = mk == codes[0]
        for c in codes[1:]:
            result = result | (mk == c)
        return result & valid

    is_app = (mk >= 0xE0) & (mk <= 0xEF)
    allowed = is_any(*SOF_SUPPORTED, DHT, DQT, DRI, SOS, DNL, COM) | (is_app & valid)
    unsupported_marker = is_any(*SOF_UNSUPPORTED).any()
    unknown_marker = (valid & ~allowed).any()
    is_sof, is_sos, is_dht, is_dqt, is_dri = is_any(*SOF_SUPPORTED), is_any(SOS), is_any(DHT), is_any(DQT), is_any(DRI)
    sof_count = g.op("ReduceSum", is_sof.int(), keepdims=0)
    first_of = lambda mask: g.op("ArgMax", mask.int(), axis=0, keepdims=0)  # noqa: E731
    sof_row, sos_row = first_of(is_sof), first_of(is_sos)
    frame_ok = (sof_count == 1) & is_sos.any() & (sof_row < sos_row)

    # --- SOF ---
    sp = g.op("Gather", pos, sof_row, axis=0)
    sof_code = g.op("Gather", mk, sof_row, axis=0)
    precision, height, width, ncomp = at(sp + 4), at(sp + 5) * 256 + at(sp + 6), at(sp + 7) * 256 + at(sp + 8), at(sp + 9)
    sof_len = g.op("Gather", ln, sof_row, axis=0)
    three = g.lift(np.arange(3))
    comp_valid = three < ncomp
    ids = at(sp + 10 + three * 3)
    hv = at(sp + 11 + three * 3)
    h, v, tq = hv // 16, hv % 16, at(sp + 12 + three * 3)
    h_max = g.op("ReduceMax", g.where(comp_valid, h, g.lift(0)), keepdims=0)
    v_max = g.op("ReduceMax", g.where(comp_valid, v, g.lift(0)), keepdims=0)
    h_safe, v_safe = g.op("Max", h, g.lift(1)), g.op("Max", v, g.lift(1))
    bad_comp = comp_valid & ((h < 1) | (h > 4) | (v < 1) | (v > 4) | (tq > 3) |
                             (h_max % h_safe != 0) | (v_max % v_safe != 0))
    id_triplet = lambda a, b_, c: (at(sp + 10) == a) & (at(sp + 13) == b_) & (at(sp + 16) == c)  # noqa: E731
    big_gamut = (ncomp == 3) & (id_triplet(1, 0x22, 0x23) | id_triplet(0x72, 0x67, 0x62))
    duplicate_ids = (ncomp == 3) & ((at(sp + 10) == at(sp + 13)) | (at(sp + 10) == at(sp + 16)) |
                                    (at(sp + 13) == at(sp + 16)))
    unsupported = unsupported_marker | (precision != 8) | ((ncomp != 1) & (ncomp != 3)) | big_gamut
    too_large = (height > MAX_SIDE) | (width > MAX_SIDE) | (height * width > MAX_PIXELS)
    sof_bad = (sof_len != ncomp * 3 + 8) | (height < 1) | (width < 1) | bad_comp.any() | duplicate_ids
    progressive = sof_code == 0xC2

    # --- DHT: up to 8 tables per segment ---
    sixteen = g.lift(np.arange(16))
    kraft_weights = g.lift(2 ** (15 - np.arange(16)))  # length l counts 2^(16 - l); full when the sum reaches 2^16
    symbols = g.lift(np.arange(256))
    start, remaining = pos + 4, ln - 2
    dht_bad = g.lift(np.zeros(1, dtype=bool)) & is_dht  # all False, shaped like the rows
    defined_huff = g.op("Unsqueeze", g.lift(0) * mk, g.lift(np.array([1]))) * g.lift(np.zeros((1, 8), np.int64))
    unsq = lambda x: g.op("Unsqueeze", x, g.lift(np.array([1])))  # noqa: E731
    for _ in range(8):
        active = is_dht & (remaining > 0)
        index = at(start)
        counts = at(unsq(start + 1) + sixteen)  # [rows, 16]
        total = g.op("ReduceSum", counts, np.array([1]), keepdims=0)
        kraft = g.op("ReduceSum", counts * kraft_weights, g.lift(np.array([1])), keepdims=0)
        cls, tid = index // 16, index % 16
        values = at(unsq(start + 17) + symbols)  # [rows, 256]
        dc_symbol_bad = g.op("ReduceSum", ((values > 15) & (symbols < unsq(total))).int(), np.array([1]), keepdims=0) > 0
        dht_bad = dht_bad | (active & ((remaining <= 16) | (total > 256) | (total > remaining - 17) |
                                       (cls > 1) | (tid > 3) | (kraft >= 65536) | ((cls == 0) & dc_symbol_bad)))
        slot = g.op("OneHot", cls * 4 + tid, g.lift(np.array(8)), g.lift(np.array([0, 1])), axis=-1)
        defined_huff = defined_huff + slot * unsq((active & (cls <= 1) & (tid <= 3)).int())
        used = g.where(active, total + 17, g.lift(0))
        start, remaining = start + used, remaining - used
    dht_bad = dht_bad | (is_dht & (remaining != 0))

    # --- DQT: up to 4 tables per segment ---
    start, remaining = pos + 4, ln - 2
    dqt_bad = g.lift(np.zeros(1, dtype=bool)) & is_dqt
    defined_quant = g.op("Unsqueeze", g.lift(0) * mk, g.lift(np.array([1]))) * g.lift(np.zeros((1, 4), np.int64))
    for _ in range(4):
        active = is_dqt & (remaining > 0)
        pq, tid = at(start) // 16, at(start) % 16
        size = (pq + 1) * 64 + 1
        dqt_bad = dqt_bad | (active & ((pq > 1) | (tid > 3) | (size > remaining)))
        slot = g.op("OneHot", tid, g.lift(np.array(4)), g.lift(np.array([0, 1])), axis=-1)
        defined_quant = defined_quant + slot * unsq((active & (tid <= 3)).int())
        used = g.where(active, size, g.lift(0))
        start, remaining = start + used, remaining - used
    dqt_bad = dqt_bad | (is_dqt & (remaining != 0))
    dri_bad = is_dri & (ln != 4)

    # Tables defined by the segments up to each row (a DHT/DQT may come after the SOF, between scans).
    huff_ready = g.op("CumSum", defined_huff, g.lift(np.array(0))) > 0  # [rows, 8]: DC 0-3, AC 0-3
    quant_ready = g.op("CumSum", defined_quant, g.lift(np.array(0))) > 0  # [rows, 4]

    # --- SOS ---
    four = g.lift(np.arange(4))
    ns = at(pos + 4)
    slot_valid = four < unsq(ns)  # [rows, 4]
    scan_ids = at(unsq(pos + 5) + four * 2)
    tables = at(unsq(pos + 6) + four * 2)
    td, ta = tables // 16, tables % 16
    match = g.op("Unsqueeze", scan_ids, g.lift(np.array([2]))) == ids  # [rows, 4, 3]
    match = match & comp_valid
    member = g.op("ReduceSum", match.int(), g.lift(np.array([2])), keepdims=0) > 0
    comp_of = g.op("ArgMax", match.int(), axis=2, keepdims=0)  # [rows, 4]
    h_of, v_of, tq_of = (g.op("Gather", x, comp_of, axis=0) for x in (h, v, tq))
    same = g.op("Unsqueeze", scan_ids, g.lift(np.array([2]))) == g.op("Unsqueeze", scan_ids, g.lift(np.array([1])))
    upper = g.lift(np.triu(np.ones((4, 4), dtype=bool), 1))
    both = g.op("Unsqueeze", slot_valid, g.lift(np.array([2]))) & g.op("Unsqueeze", slot_valid, g.lift(np.array([1])))
    dup_scan = g.op("ReduceSum", (same & upper & both).int(), g.lift(np.array([1, 2])), keepdims=0) > 0
    ss, se, ahal = at(pos + 5 + ns * 2), at(pos + 6 + ns * 2), at(pos + 7 + ns * 2)
    ah, al = ahal // 16, ahal % 16
    needs_dc = ~progressive | ((ss == 0) & (ah == 0))
    needs_ac = ~progressive | (ss > 0)
    clamp3 = lambda x: g.op("Clip", x, g.lift(0), g.lift(3))  # noqa: E731
    dc_ready = g.op("GatherElements", huff_ready.int(), clamp3(td), axis=1) > 0
    ac_ready = g.op("GatherElements", huff_ready.int(), clamp3(ta) + 4, axis=1) > 0
    q_ready = g.op("GatherElements", quant_ready.int(), clamp3(tq_of), axis=1) > 0
    slot_bad = slot_valid & (~member | (td > 3) | (ta > 3) | (unsq(needs_dc) & ~dc_ready) |
                             (unsq(needs_ac) & ~ac_ready) | ~q_ready)
    blocks = g.op("ReduceSum", g.where(slot_valid, h_of * v_of, g.lift(0)), g.lift(np.array([1])), keepdims=0)
    progression_bad = progressive & (((ss == 0) & (se != 0)) | ((ss > 0) & ((se < ss) | (se > 63) | (ns != 1))) |
                                     ((ah != 0) & (al != ah - 1)) | (al > 13))
    sos_bad = is_sos & ((ln != ns * 2 + 6) | (ns < 1) | (ns > 4) |
                        (g.op("ReduceSum", slot_bad.int(), g.lift(np.array([1])), keepdims=0) > 0) | dup_scan |
                        ((ns > 1) & (blocks > 10)) | progression_bad)
    first_ns = g.op("Gather", ns, sos_row, axis=0)
    first_se = g.op("Gather", se, sos_row, axis=0)
    scans = g.op("ReduceSum", is_sos.int(), keepdims=0)
    sequence_bad = (~progressive & (first_ns == ncomp) & (scans > 1)) | ((sof_code == 0xC1) & (first_se != 63))

    corrupt = unknown_marker | ~frame_ok | sof_bad | dht_bad.any() | dqt_bad.any() | dri_bad.any() | \
        sos_bad.any() | sequence_bad
    return structure_ok, unsupported, too_large, corrupt


# --- the graphs -----------------------------------------------------------------------------------------
def decode_image_graph(opset: int, input_name: str = "image_bytes", output_name: str = "image") -> onnx.ModelProto:
    """image_bytes uint8 [n] (a PNG or JPEG file) -> image uint8 [height, width, 3] RGB, as
    PIL.Image.open(...).convert("RGB") (see the module doc for where the decoders differ)."""
    g = _Graph(GraphBuilder(opset, Names("decode_")))
    data = _V(g, input_name)
    b = g.op("Cast", data, to=TensorProto.INT64)
    n = g.op("Squeeze", g.op("Shape", b), g.lift(np.array([0])))
    bp = g.op("Concat", b, g.lift(np.zeros(64, np.int64)), axis=0)  # reads past the end see zeros
    at = lambda i: g.op("Gather", bp, g.op("Clip", g.lift(i), g.lift(0), n + 63), axis=0)  # noqa: E731

    short = n < 8
    is_png, png_corrupt, png_unsupported, png_too_large = _png_checks(g, at, n)
    is_jpeg = (n >= 4) & (at(0) == 255) & (at(1) == 0xD8)
    structure_ok, jpeg_unsupported, jpeg_too_large, jpeg_corrupt = _jpeg_checks(g, b, bp, at, n, is_jpeg)

    def pick(*pairs):
        reason = g.lift(0)
        for cond, code in reversed(pairs):
            reason = g.where(cond, g.lift(code), reason)
        return reason

    reason = pick((short, 1), (~is_png & ~is_jpeg, 2),
                  (is_png & png_corrupt, 8), (is_png & png_unsupported, 3), (is_png & png_too_large, 7),
                  (is_jpeg & ~structure_ok, 4), (is_jpeg & jpeg_unsupported, 5), (is_jpeg & jpeg_too_large, 7),
                  (is_jpeg & jpeg_corrupt, 6))

    ok = g.child()
    decoded = ok.op("DecodeImage", data, domain=EXTENSIONS, types=IMAGE_TYPE, color_space="rgb",
                    name=INPUT_ERROR + "image_bytes could not be decoded as a PNG or JPEG; pass an intact file")
    # Which channel order did this runtime's DecodeImage produce? Builds before color_space
    # existed ignore it and give BGR. Decode a 1 x 1 red PNG the same way and look.
    probe = ok.op("DecodeImage", np.frombuffer(RED_PIXEL_PNG, np.uint8), domain=EXTENSIONS, types=IMAGE_TYPE,
                  color_space="rgb")
    red_first = ok.op("Gather", ok.op("Reshape", probe, np.array([-1])), 0, axis=0).int() == 255
    order = ok.where(red_first, np.array([0, 1, 2]), np.array([2, 1, 0]))
    # A grayscale JPEG comes out with 1 channel (0.15) or 3 (older builds): repeat it, as PIL's
    # convert("RGB") does.
    channels = ok.op("Gather", ok.op("Shape", decoded), 2, axis=0)
    rgb = ok.op("Gather", decoded, ok.op("Min", order, channels - 1), axis=2)
    ok_graph = ok.graph("decoded", [], [_value(rgb.name, TensorProto.UINT8, None)])
    g.op("If", reason == 0, then_branch=ok_graph, else_branch=_error_graph(g, reason, REASONS), out=output_name)
    return _model(g, "decode_image", [_value(input_name, TensorProto.UINT8, ["image_bytes"])],
                  [_value(output_name, TensorProto.UINT8, ["height", "width", 3])],
                  "PNG/JPEG bytes -> uint8 RGB [height, width, 3] (onnxruntime-extensions DecodeImage, guarded)")


def pixel_guard_graph(opset: int, input_name: str = "image", output_name: str = "checked_image") -> onnx.ModelProto:
    """image uint8 [height, width, 3] -> the same image; an empty one raises "input error: ..."
    (the resize would divide by a zero size: no crash, but no meaningful answer either)."""
    g = _Graph(GraphBuilder(opset, Names("guard_")))
    image = _V(g, input_name)
    shape = g.op("Shape", image)
    rows, cols = (g.op("Gather", shape, i, axis=0) for i in (0, 1))
    reason = g.where((rows == 0) | (cols == 0), 1, 0)
    ok = g.child()
    accepted = ok.op("Identity", image)
    ok_graph = ok.graph("accepted", [], [_value(accepted.name, TensorProto.UINT8, None)])
    g.op("If", reason == 0, then_branch=ok_graph, else_branch=_raise_graph(g, reason, EMPTY_IMAGE), out=output_name)
    return _model(g, "pixel_guard", [_value(input_name, TensorProto.UINT8, ["height", "width", 3])],
                  [_value(output_name, TensorProto.UINT8, ["height", "width", 3])], "rejects an empty image")
