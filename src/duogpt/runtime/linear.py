"""Sparse runtime: pruned linears that hold their weight only in the packed column-segment format.

``DualSparseLinear`` is an ``nn.Linear`` by type (block detection and the sparsifier hooks
find it) whose weight exists only packed, as three buffers (``bitmaps``, ``values`` with the
kernel's padding, ``offsets``), so ``model.to(device)`` moves it. Two paths compute the
same product:

- inputs of at most ``MAX_KERNEL_ROWS`` rows (decode steps, small batches): the spMspV
  kernel, which reads only the columns whose input is nonzero (the C kernel on the CPU, the
  Triton kernel on CUDA); on the CPU, linears of a block that read one input (q/k/v,
  gate/up; ``share_inputs``) make one kernel call together;
- longer inputs (prefill, evaluation): the weight unpacked into a buffer that every linear
  of the thread reuses, then one dense matmul; the dense weights never live in memory
  together (one linear's at a time).

A weight with (almost) no zeros is no smaller packed than dense (the bitmaps add a bit per
weight); where its input is not sparsified either, ``decode_paths`` holds it dense instead when
this CPU measures the dense decode product faster (kernels/tune.py ``dense_faster``): rows up
to ``MAX_KERNEL_ROWS`` then go to ``dense_row`` (each weight row read once for all of them),
longer inputs to one matmul, and the packed form is made again only when asked for (a save, a
move to the GPU).

``DUOGPT_GPU_PATH=1`` sends CPU tensors down the CUDA branch (the Triton kernels, run on the
CPU under ``TRITON_INTERPRET=1``): how the tests cover the GPU code without a GPU.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from duogpt.errors import UsageError
from duogpt.hardware import fast_half_matmul
from duogpt.models import find_blocks
from duogpt.runtime.decode_step import lean_decode
from duogpt.runtime.format import DEFAULT_TILE_ROWS, SparseLinear, dense_no_larger, pack, unpack, validate
from duogpt.runtime.kernels import triton_spmspv, tune
from duogpt.runtime.kernels.cpu import (
    CpuGroupSpMSpV,
    CpuSpMSpV,
    dense_row,
    pad_elements,
    padded_values,
    retile,
    unpack_into,
)
from duogpt.shards import ShardReader

PACKED_PREFIX = "duogpt-sparse"  # format 1: shards duogpt-sparse-NNNNN.safetensors beside the dense ones
SPARSE_FILE = f"{PACKED_PREFIX}.safetensors"  # format 1's single packed file, before the shards
MAX_KERNEL_ROWS = 16
RUNTIMES = ("dense", "sparse")
GPU_PATH_ENV = "DUOGPT_GPU_PATH"


def gpu_path(x: torch.Tensor) -> bool:
    """Whether ``x`` goes down the CUDA branch (a CUDA tensor, or any tensor under DUOGPT_GPU_PATH=1)."""
    return x.is_cuda or os.environ.get(GPU_PATH_ENV) == "1"


class _Scratch(threading.local):
    """Per thread, per (device, dtype): one flat buffer, grown to the largest weight unpacked into it."""

    def __init__(self):
        self.buffers: dict[tuple, torch.Tensor] = {}

    def get(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (str(device), dtype)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel:
            self.buffers.pop(key, None)  # free the old one first
            buf = self.buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel]


_SCRATCH = _Scratch()


class DualSparseLinear(nn.Linear):
    """A linear whose (pruned) weight is held only in the column-segment format.

    ``weight`` is not stored: reading it unpacks a fresh dense copy (for tools that inspect
    or export weights; the forward pass never reads it).
    """

    def __init__(self, sp: SparseLinear, bias: torch.Tensor | None = None):
        """On the CPU, this machine's kernel variant and tile height are chosen now (kernels/tune.py)."""
        nn.Module.__init__(self)
        validate(sp)
        self.out_features, self.in_features = sp.shape
        self.stored_tile_rows = sp.tile_rows  # the machine-independent layout checkpoints keep
        self.variant, self.nnz = 0, sp.values.numel()
        self._set_packed(sp)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.use_kernel = True
        self.shared: tuple[SharedInput, int] | None = None  # (its group, its slot) once share_inputs links it
        self.sparsifier = None  # its input's ActivationSparsifier, once sparsify.install attaches one
        self.register_buffer("held_dense", None, persistent=False)  # the (n, k) weight, once decode_paths holds it
        if sp.values.device.type == "cpu":
            self.plan_cpu()

    def _set_packed(self, sp: SparseLinear) -> None:
        """Hold ``sp`` (any layout of this weight: its values may leave gaps between aligned segments)."""
        self.tile_rows, self.values_len = sp.tile_rows, sp.values.numel()
        self.register_buffer("bitmaps", sp.bitmaps, persistent=False)
        self.register_buffer("values", padded_values(sp.values), persistent=False)
        self.register_buffer("offsets", sp.offsets, persistent=False)
        self._cpu_kernel: CpuSpMSpV | None = None

    def plan_cpu(self) -> None:
        """Re-tile to the tile height, and take the kernel variant, this CPU decodes the shape fastest with
        (measured once per machine and shape, then cached; ``DUOGPT_KERNEL_PLAN`` overrides)."""
        n, k = self.out_features, self.in_features
        chosen = tune.plan(n, k, self.values.dtype, self.nnz / (n * k), self.stored_tile_rows)
        if chosen != tune.Plan(0, self.stored_tile_rows):
            self._set_packed(retile(self.sp, chosen.tile_rows, chosen.align))
        self.variant, self._cpu_kernel = chosen.variant, None

    def dense_sized(self) -> bool:
        """Whether the dense weight takes no more memory than the packed one (no or almost no zeros)."""
        size = self.values.element_size()
        return dense_no_larger(self.out_features, self.in_features, self.nnz, size)

    def hold_dense(self, on: bool) -> None:
        """Hold the weight dense (``on``; the packed buffers are dropped) or packed again (re-planned for this CPU)."""
        if on == (self.held_dense is not None):
            return
        if on:
            self.held_dense = unpack(self.sp)
            for name in ("bitmaps", "values", "offsets"):
                self._buffers[name] = self._buffers[name].new_empty(0)
            self.values_len, self.tile_rows, self._cpu_kernel = 0, self.stored_tile_rows, None
            return
        sp = pack(self.held_dense, self.stored_tile_rows)
        self.held_dense = None
        self._set_packed(sp)
        if sp.values.device.type == "cpu":
            self.plan_cpu()

    def __getstate__(self):
        """Copies and pickles leave the kernel handle behind (it holds this process's library and the
        buffers' addresses); the copy makes its own at its first call."""
        state = super().__getstate__()
        state["_cpu_kernel"] = None
        return state

    @property
    def retiled(self) -> bool:
        return self.held_dense is None and (self.values_len != self.nnz or self.tile_rows != self.stored_tile_rows)

    def stored(self) -> SparseLinear:
        """The packed weight in the layout it was stored with (what checkpoints write)."""
        sp = self.sp
        return retile(sp, self.stored_tile_rows) if self.retiled else sp

    def _apply(self, fn, recurse=True):
        # the GPU kernels want the stored layout (tiles <= 256 rows, no gaps): undo a CPU plan before leaving the CPU
        if self.held_dense is not None and fn(torch.empty(0)).device.type != "cpu":
            self.hold_dense(False)
        if self.retiled and fn(torch.empty(0)).device.type != "cpu":
            self._set_packed(self.stored())
            self.variant = 0
        self._cpu_kernel = None  # it holds the buffers' addresses: made again from the new ones
        return super()._apply(fn, recurse)

    @classmethod
    def from_linear(cls, linear: nn.Linear, tile_rows: int | None = None) -> DualSparseLinear:
        tile_rows = tile_rows or choose_tile_rows(linear.out_features)
        return cls(pack(linear.weight.data.cpu(), tile_rows), linear.bias)

    @property
    def sp(self) -> SparseLinear:
        """The packed weight (views of the buffers, on the module's device; packed anew while held dense)."""
        if self.held_dense is not None:
            return pack(self.held_dense, self.stored_tile_rows)
        return SparseLinear(
            self.bitmaps,
            self.values[: self.values_len],
            self.offsets,
            (self.out_features, self.in_features),
            self.tile_rows,
        )

    @property
    def weight(self) -> torch.Tensor:
        return self._unpacked(reuse=False)

    def _unpacked(self, reuse: bool) -> torch.Tensor:
        """The dense weight, in the thread's reused buffer (``reuse``) or a new tensor."""
        if self.held_dense is not None:
            return self.held_dense if reuse else self.held_dense.clone()
        n, k = self.out_features, self.in_features
        dtype, device = self.values.dtype, self.values.device
        out = _SCRATCH.get(n * k, dtype, device) if reuse else torch.empty(n * k, dtype=dtype, device=device)
        if gpu_path(self.values):
            return triton_spmspv.unpack_transposed(self._stored_on_device(), out)
        return unpack_into(self.sp, out)

    def _stored_on_device(self) -> SparseLinear:
        """The layout the GPU kernels take: the stored tiles (re-tiled here only when a CPU plan changed them
        and the CUDA branch runs on CPU tensors, as under DUOGPT_GPU_PATH=1)."""
        return self.stored() if self.retiled else self.sp

    def cpu_kernel(self) -> CpuSpMSpV:
        """The C kernel over this module's buffers: made once (a decode step calls hundreds), again when the
        buffers changed (a deep copy of the model, a move, a re-tiling)."""
        kernel = self._cpu_kernel
        if kernel is None or kernel.values is not self._buffers["values"]:
            kernel = self._cpu_kernel = CpuSpMSpV(self.sp, padded=self.values, variant=self.variant)
        return kernel

    def attach_sparsifier(self, sp) -> _Attached:
        """Apply ``sp`` (an ``ActivationSparsifier``) to every input, in place of a forward pre-hook: on the
        CPU kernel path its threshold goes into the kernel call; everywhere else ``sp(x)`` runs first, as a
        hook would. Returns a handle whose ``remove()`` detaches it."""
        self.sparsifier = sp
        return _Attached(self, sp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._buffers["held_dense"] is not None:  # the buffer read directly: Module.__getattr__ costs ~1 us a call
            return self._dense_forward(x)
        shared, grad = self.shared, torch.is_grad_enabled()
        if shared is not None and self.use_kernel and not grad:
            y = shared[0].take(shared[1], x)  # computed with a sibling's call on this very input
            if y is not None:
                if self.sparsifier is not None:
                    self.sparsifier.calls += 1
                return y if self.bias is None else y + self.bias
        rows = x.numel() // x.shape[-1]
        kernel = self.use_kernel and rows <= MAX_KERNEL_ROWS and not grad
        cpu = kernel and not gpu_path(x)
        sp, threshold = self.sparsifier, 0.0
        if sp is not None:
            threshold = sp.kernel_threshold(x) if cpu else None
            if threshold is None:
                x, threshold = sp(x), 0.0
        if not kernel:
            return self._batched(x, reuse=not grad)  # with autograd on, backward reads the weight: no shared buffer
        if not cpu:
            y = triton_spmspv.spmspv(self._stored_on_device(), x.reshape(rows, -1)).reshape(*x.shape[:-1], -1)
        elif shared is not None:
            y = shared[0].output(shared[1], x, threshold)  # shaped (..., out_features) already: no reshape
        else:
            y = self.cpu_kernel()(x, threshold)
        y = y if y.dtype == x.dtype else y.to(x.dtype)
        bias = self.bias
        return y if bias is None else y + bias

    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The held dense weight: ``dense_row`` for decode rows on the CPU, else one matmul (``_batched``)."""
        if self.sparsifier is not None:
            x = self.sparsifier(x)  # decode_paths holds only weights whose input is not sparsified; a later one applies
        grad = torch.is_grad_enabled()
        if grad or x.numel() // x.shape[-1] > MAX_KERNEL_ROWS or gpu_path(x):
            return self._batched(x, reuse=not grad)
        y = dense_row(self.held_dense, x)
        y = y if y.dtype == x.dtype else y.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def _batched(self, x: torch.Tensor, reuse: bool) -> torch.Tensor:
        """Unpack, then one matmul; in float32 where this machine has no half-precision matmul of its own
        (hardware.py: there torch's bfloat16 product of a prompt is 4-300x slower than float32's)."""
        w = self._unpacked(reuse)
        if w.dtype == torch.float32 or fast_half_matmul(w.dtype, w.device.type):
            return F.linear(x, w.to(x.dtype), self.bias)
        n, k = w.shape
        wide = _SCRATCH.get(n * k, torch.float32, w.device) if reuse else torch.empty(n * k, device=w.device)
        wide = wide.view(k, n).copy_(w.T).T  # the unpacked weight's own (k, n) layout, widened
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), wide, bias).to(x.dtype)

    def extra_repr(self) -> str:
        density = self.nnz / (self.out_features * self.in_features)
        held = "dense (faster here at this density)" if self.held_dense is not None else "packed"
        return f"in_features={self.in_features}, out_features={self.out_features}, density={density:.3f}, {held}"


class _Attached:
    """What ``DualSparseLinear.attach_sparsifier`` returns: ``remove()`` detaches, as a hook handle would."""

    def __init__(self, linear: DualSparseLinear, sp):
        self.linear, self.sp = linear, sp

    def remove(self) -> None:
        if self.linear.sparsifier is self.sp:
            self.linear.sparsifier = None


class SharedInput:
    """Linears of one block that read the same input (q/k/v; gate/up), multiplied together on the CPU.

    The first member a decode step calls computes every member's product in one kernel call
    (``CpuGroupSpMSpV``: the input's active columns found once, one parallel region, one dtype
    conversion); the others take theirs while they are called with that same input tensor. A member
    called with any other input recomputes the group, so a model that feeds its members different
    tensors still gets each one's own product.
    """

    def __init__(self, members: list[DualSparseLinear]):
        self.members = members
        self._product: CpuGroupSpMSpV | None = None
        self._input: torch.Tensor | None = None  # the input the pending outputs belong to
        self._pending: dict[int, torch.Tensor] = {}

    def __getstate__(self):
        """Copies and pickles hold the members only: the product (library handle, addresses) and any pending
        outputs are made again."""
        return {"members": self.members, "_product": None, "_input": None, "_pending": {}}

    def take(self, slot: int, x: torch.Tensor) -> torch.Tensor | None:
        """Member ``slot``'s output if the group computed it with this very input tensor and it is not taken yet."""
        if self._input is not x:
            return None
        out = self._pending.pop(slot, None)
        if not self._pending:
            self._input = None  # the group's last member has it: hold no activation past it
        return out

    def output(self, slot: int, x: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
        """Member ``slot``'s product with ``x`` (shape (..., k), at most ``MAX_KERNEL_ROWS`` rows; entries with
        ``|x| <= threshold`` taken as zeros), in ``x``'s dtype, shape (..., its out_features). Members share one
        sparsifier, so one threshold."""
        out = self.take(slot, x)
        if out is not None:
            return out
        kernels = [m.cpu_kernel() for m in self.members]
        product = self._product
        if product is None or any(a is not b for a, b in zip(product.kernels, kernels, strict=True)):
            product = self._product = CpuGroupSpMSpV(kernels)
        y = product(x, threshold)
        y = y if y.dtype == x.dtype else y.to(x.dtype)  # once for every member
        cols = product.cols
        self._pending = {i: y[..., cols[i] : cols[i + 1]] for i in range(len(kernels)) if i != slot}
        self._input = x if self._pending else None
        return y[..., cols[slot] : cols[slot + 1]]


class DecodeHead(nn.Linear):
    """A dense linear the sparse runtime keeps (the LM head) whose decode products on the CPU (one position of
    up to ``MAX_KERNEL_ROWS`` sequences) go to the C dense kernel (``dense_row``: near the memory bandwidth,
    where torch's one-row product read at 40-70% of it on the AVX2 EPYC measured, docs/kernel.md, and its
    products of 4-16 rows were 1.0-3x slower still); every other input (a prompt's positions) to ``F.linear``.
    It holds the same weight parameter as the linear it replaces, so a head tied to the embeddings stays tied."""

    @classmethod
    def replacing(cls, linear: nn.Linear) -> DecodeHead:
        head = cls.__new__(cls)
        nn.Module.__init__(head)
        head.in_features, head.out_features = linear.in_features, linear.out_features
        head.weight, head.bias = linear.weight, linear.bias
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        rows, prompt = x.numel() // max(1, x.shape[-1]), x.dim() > 2 and x.shape[-2] > 1
        on_torch = x.is_cuda or w.is_cuda or torch.is_grad_enabled() or not w.is_contiguous()
        if rows > MAX_KERNEL_ROWS or prompt or on_torch:
            return F.linear(x, w, self.bias)
        y = dense_row(w, x)
        y = y if self.bias is None else y + self.bias
        return y.to(x.dtype)


def decode_paths(model: nn.Module, enabled: bool = True) -> None:
    """Every decode shortcut that applies to the model's weights, dense or packed:

    - the lean decode step of the layers (``decode_step.lean_decode``);
    - the LM head's decode rows by the dense kernel (``DecodeHead``);
    - per packed linear, its path (``choose_paths``): dense where that is faster here, else the kernel,
      linked with the linears that read the same input (``share_inputs``).

    Call again after installing or changing sparsifiers (the path depends on them). ``enabled`` False
    gives back transformers' layer forward and head, and puts every packed linear on the kernel."""
    lean_decode(model, enabled)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if enabled and type(head) is nn.Linear and head.weight.dtype in (torch.float32, torch.float16, torch.bfloat16):
        model.set_output_embeddings(DecodeHead.replacing(head))
    elif not enabled and type(head) is DecodeHead:
        plain = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(plain)
        plain.in_features, plain.out_features = head.in_features, head.out_features
        plain.weight, plain.bias = head.weight, head.bias
        model.set_output_embeddings(plain)
    choose_paths(model, enabled)


def choose_paths(model: nn.Module, enabled: bool = True) -> int:
    """Every packed linear's path (``choose_path``), then the kernel ones that share an input linked.
    Returns the number held dense."""
    held = sum(choose_path(m, enabled) for m in model.modules() if isinstance(m, DualSparseLinear))
    share_inputs(model)
    return held


def choose_path(linear: DualSparseLinear, enabled: bool = True) -> bool:
    """Hold ``linear`` dense if it is on the CPU, its dense weight is no larger than its packed one, its input is
    not sparsified (no sparsifier, or threshold 0) and this CPU measures the dense product faster at its shape
    (``tune.dense_faster``); else packed, on the kernel. Returns whether it is held dense (unlink it from its
    siblings, ``share_inputs``, before its next call)."""
    sp, held = linear.sparsifier, linear.held_dense
    dense = (
        enabled
        and linear.dense_sized()
        and (sp is None or sp.threshold <= 0)
        and (held if held is not None else linear.values).device.type == "cpu"
        and os.environ.get(GPU_PATH_ENV) != "1"
        and tune.dense_faster(linear.out_features, linear.in_features, linear.values.dtype, linear.stored_tile_rows)
    )
    linear.hold_dense(dense)
    return dense


def share_inputs(model: nn.Module) -> int:
    """Link the packed linears (on the kernel) of every block group that reads one input (q/k/v, gate/up;
    ``SharedInput``); members of a group that cannot be linked (a dense one among them) are unlinked.
    Returns the number of groups linked."""
    linked = 0
    for block in find_blocks(model)[1]:
        for group in block.groups.values():
            members = list(group.values())
            packed = [m for m in members if isinstance(m, DualSparseLinear)]
            for m in packed:
                m.shared = None
            if len(members) < 2 or len(packed) < len(members) or any(m.held_dense is not None for m in packed):
                continue
            if len({(m.in_features, m.values.dtype) for m in members}) != 1:
                continue
            shared = SharedInput(members)
            for slot, member in enumerate(members):
                member.shared = (shared, slot)
            linked += 1
    return linked


def choose_tile_rows(n_out: int, threads: int | None = None) -> int:
    """The largest tile (<= 256 rows, whose sums fit in registers) that still gives every thread two tiles."""
    threads = threads or torch.get_num_threads()
    for rows in (DEFAULT_TILE_ROWS, 128):
        if -(-n_out // rows) >= 2 * threads:
            return rows
    return 64


def linears_by_name(model: nn.Module) -> dict[str, tuple[nn.Module, str, nn.Linear]]:
    """'layers.{i}.self_attn.q_proj' -> (parent module, attribute, linear)."""
    _, blocks = find_blocks(model)
    out = {}
    for block in blocks:
        for qual, linear in block.linears().items():
            parent_name, attr = qual.split(".")
            out[f"layers.{block.index}.{qual}"] = (getattr(block.module, parent_name), attr, linear)
    return out


def to_sparse_runtime(model: nn.Module, packed: dict[str, SparseLinear] | None = None) -> nn.Module:
    """Swap every pruned linear of ``model`` for a ``DualSparseLinear`` (in place); the dense weights are dropped.

    Call before installing sparsifiers (they hook the linears found at install time).
    """
    for name, (parent, attr, linear) in linears_by_name(model).items():
        if isinstance(linear, DualSparseLinear):
            continue
        sp = None if packed is None else packed.get(name)
        if sp is not None and sp.shape != tuple(linear.weight.shape):
            raise UsageError(
                f"{SPARSE_FILE}: {name} has shape {sp.shape}, the model {tuple(linear.weight.shape)}: "
                "delete the file to rebuild it from the weights"
            )
        new = DualSparseLinear.from_linear(linear) if sp is None else DualSparseLinear(sp, linear.bias)
        setattr(parent, attr, new.to(linear.weight.device))
    decode_paths(model)
    return model


def packed_form(linear: nn.Linear) -> SparseLinear:
    """The linear's weight in the column-segment format (the runtime's own when it has one), on the CPU."""
    if isinstance(linear, DualSparseLinear):
        sp = linear.stored()
        return SparseLinear(sp.bitmaps.cpu(), sp.values.cpu(), sp.offsets.cpu(), sp.shape, sp.tile_rows)
    return pack(linear.weight.data.cpu(), choose_tile_rows(linear.out_features))


def read_packed(reader: ShardReader, name: str, where: str) -> SparseLinear:
    """The packed weight stored under ``name`` (``name.bitmaps``, ``.values``, ``.offsets``, ``.meta``), validated."""
    try:
        n, k, tile_rows = (int(v) for v in reader.get(f"{name}.meta").flatten().tolist())
        bitmaps, offsets = reader.get(f"{name}.bitmaps"), reader.get(f"{name}.offsets")
        values = reader.get(f"{name}.values", spare=pad_elements(reader.dtype_of(f"{name}.values")))
    except UsageError:  # the reader's own message names the damaged shard
        raise
    except (ValueError, TypeError):
        raise UsageError(
            f"{where}: the packed entry for {name} is incomplete or damaged: re-run duogpt prune"
        ) from None
    sp = SparseLinear(bitmaps, values, offsets, (n, k), tile_rows)
    validate(sp)
    return sp


def load_packed(directory: str | Path) -> dict[str, SparseLinear] | None:
    """Format 1: read and validate the packed weights beside the dense ones (sharded, or one older file)."""
    directory = Path(directory)
    if (
        not (directory / f"{PACKED_PREFIX}.safetensors.index.json").is_file()
        and not (directory / SPARSE_FILE).is_file()
    ):
        return None
    reader = ShardReader(directory, PACKED_PREFIX)
    names = [key[: -len(".meta")] for key in reader.weight_map if key.endswith(".meta")]
    return {name: read_packed(reader, name, str(directory)) for name in names}


def use_kernels(model: nn.Module, enabled: bool) -> None:
    """Switch a sparse-runtime model between the kernels and the batched (unpack + matmul) path for every input."""
    for module in model.modules():
        if isinstance(module, DualSparseLinear):
            module.use_kernel = enabled


def weight_facts(linear: nn.Linear) -> tuple[int, int, int, int]:
    """(n_out, k_in, bytes per weight value, zero weights) of a linear, without unpacking a packed one."""
    n, k = linear.out_features, linear.in_features
    if isinstance(linear, DualSparseLinear):
        return n, k, linear.values.element_size(), n * k - linear.nnz
    return n, k, linear.weight.element_size(), int((linear.weight == 0).sum())
