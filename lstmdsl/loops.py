"""The plan's ways to run a loop other than step by step: the persistent schedule (Persistent: all steps as
one launch that keeps the weights on chip) and the layer wavefront (Wavefront: a stack's layers overlapped
chunk by chunk), each with its cost model, which the runtime evaluates once the sizes are bound; and the cuBLAS
workspace its GEMMs take (GemmWorkspace), a cost model by batch too. Part of the Plan (plan.Loop.persistent,
Plan.wavefront, Plan.gemm_workspace; plan.py re-exports them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Persistent:
    """The persistent schedule of a loop: all T steps as one cooperative launch of one kernel. Its stages
    are the loop's kernels with every per-step product computed inside one, in order; at each step every
    block runs its share of each stage (the products of its elements first, as register tiles of 4 weight
    rows x 4 batch rows over the block's threads, then a thread per element for the pointwise work), and
    the grid meets at a barrier after each stage. A block keeps the weight rows it multiplies in shared
    memory for all steps (when they fit: else it reads them from memory at each step, slower but the same).

    The cost model (`applies`, `blocks`), evaluated by the runtime once the sizes are bound:
    - used when the schedule forces it (`persistent`), or where the weights fit the blocks' shared memory and a
      rule holds (B at most its batch, a step's multiply-adds over the batch in range: `work`, and `alone_work`
      in a layer of one direction, `beside_work` in a direction of a bidirectional layer whose grid takes its
      share of the multiprocessors; where all the weights fit one block also `split_work`, and `row_work` by a
      batch row's) (`persistent auto`); else stepwise;
    - where all the weights fit one block: at B >= 2 a grid splitting the batch rows (`split_rows`: block
      barriers, 0.06 us on the H200, not grid barriers, 1-2 us: benchmarks/persistent_floor.py), at B = 1 one
      block when a step is at most one_block_work multiply-adds; else one block per multiprocessor, at most
      one per element."""

    stages: tuple["Kernel", ...]
    forced: bool = False
    one_block_work: int = 65536
    threads: int = 256
    name: str = ""  # the launch's kernel (the calls pass names it)
    work: tuple[tuple[int, ...], ...] = ()  # rules (largest batch, least, most multiply-adds per step over the
    # batch[, smallest batch: 1 where not given]), inclusive
    split_work: tuple[tuple[int, int, int], ...] = ()  # as work, where all the weights fit one block
    row_work: tuple[tuple[int, int, int], ...] = ()  # as split_work, by a batch row's multiply-adds a step
    alone_work: tuple[tuple[int, int, int], ...] = ()  # as work, in a layer of one direction only: the two
    # directions of a bidirectional layer run at once, and their grids of one block a multiprocessor would take
    # turns where their stepwise loops overlap
    forwards: tuple[tuple[int, int], ...] = ()  # (operand, node): a kernel of one stage whose node is the
    # product operand the next step stages (the state h) also stores it into the staged row in shared memory;
    # run as one block with every row staged, the next step reads it there instead of from memory (calls)
    exchange: int | None = None  # the one product operand of a kernel of one stage (forwards), float32 or half:
    # in a grid each item also stores it with the step's number in one 64-bit word of an exchange area (two, by
    # the step's parity); the next step's staging waits for that step's words, not a grid barrier (`exchanges`)
    split_batch: bool = True  # a grid may split the batch instead of the elements (split_rows)
    exchange_words: int = 4096  # (a block without elements then leaves the loop: it could wait forever)
    specialise: str = "auto"  # the schedule's `specialise` (on, off, auto): see `specialises`
    specialise_batch: int = 4  # auto: the largest batch a grid that exchanges its state is specialised at
    specialise_auto: bool = True  # whether auto specialises at all: only where it was measured (fp32, bf16, fp16)
    block_barriers: tuple[int, ...] = ()  # the stages after which a block barrier is enough, not a grid barrier: the
    # next stage reads and writes only its own elements of what they share (the calls pass: _block_barriers)
    beside_grids: int = 1  # a direction of a bidirectional layer, whose other direction runs at once, launches its
    # grid over the elements on 1 / beside_grids of the multiprocessors where its weights and staged rows still fit
    # on chip there, so that both grids are resident together (1: on all of them, and the two grids take turns)
    beside_work: tuple[tuple[int, int, int], ...] = ()  # as work, in a direction of a bidirectional layer whose
    # grid over the elements takes its 1 / beside_grids share (the other direction's grid resident beside it)

    def exchanges(self, words: int) -> bool:
        """Whether a grid hands its state on in tagged words, at `words` words a step (B times the operand's width):
        each block reads them all, 16 per thread in flight, and past one round (4096 at 256 threads) the trips to L2
        cost more than the barrier saves (H200, fp32: B = 1, H = 512 3.7 us a step, 4.3 with it; B = 16 22.5, 7.3)."""
        return self.exchange is not None and words <= self.exchange_words

    def applies(self, batch: int, work: int, fits: bool, split: bool = False, alone: bool = False,
                beside: bool = False) -> bool:
        """work: a step's multiply-adds over the batch; fits: the weights fit on chip; split: all fit one block;
        alone: a layer of one direction (alone_work applies), not a direction of a bidirectional layer (off unless
        the caller says so: a caller that does not know keeps the narrower rules); beside: a direction's grid over
        the elements on its share of the multiprocessors (beside_work applies)."""
        wide = (self.alone_work if alone else ()) + (self.beside_work if beside else ())
        rules = [(r, work) for r in self.work + (self.split_work if split else ()) + wide]
        rules += [(r, work // batch) for r in self.row_work] if split else []
        return self.forced or (fits and any(batch <= r[0] and r[1] <= w <= r[2] and batch >= (r[3] if len(r) > 3 else 1)
                                            for r, w in rules))

    def split_rows(self, batch: int, one_block_bytes: int, shared: int, multiprocessors: int) -> int:
        """Batch rows per block where the grid splits the batch (rows never meet in a step: each block holds
        all the weights and runs its rows alone), else 0: at B >= 2 wherever the weights fit one block (one
        block of all the rows: 5.1-6.9 us a step at B = 16-64, H = 16-32; a grid of them 2.8-3.3 at B = 32-128)."""
        ok = self.split_batch and batch >= 2 and one_block_bytes <= shared
        return -(-batch // min(batch, multiprocessors)) if ok else 0

    def specialises(self, batch: int, blocks: int, split: int, exchange: bool) -> bool:
        """Whether a launch runs a kernel compiled for its shape: the batch, the sizes, the buffers' widths and
        the launch's choices as constants, not arguments (runtime/specialise.py, which gives the measurements:
        0.67-0.88x the general kernel's forward time, 0.64-0.97x training, fp32 at B = 1-64, H = 16-1024, but
        1.18-1.39x forward at B = 8-16, H = 128-256 (T = 1000; 8 x 256 0.95-0.99x at T = 200), and still 1.25-1.32x
        at B = 16 with the batch, staged rows and strides left as arguments; bf16 and fp16: 0.56-0.83x forward,
        0.56-0.78x training where their auto runs persistent). Auto: every launch but a grid that hands its state
        on in tagged words (exchange) over more than specialise_batch rows, those slower ones; none where
        specialise_auto is off (float64 layers: not measured)."""
        if self.specialise != "auto":
            return self.specialise == "on"
        return self.specialise_auto and (blocks == 1 or split > 0 or not exchange or
                                         batch <= self.specialise_batch)

    def multiprocessors(self, device_count: int, alone: bool) -> int:
        """The multiprocessors a grid over the elements may be sized for: all of them in a layer of one direction
        (alone), a beside_grids-th of them in a direction of a bidirectional layer (runtime/persistent.py's
        launch_shape takes that share only where the weights and staged rows still fit there)."""
        return device_count if alone else max(1, device_count // self.beside_grids)

    def blocks(self, work: int, elements: int, one_block_bytes: int, shared: int, multiprocessors: int) -> int:
        """The grid (elements: the widest stage's; one_block_bytes: the weights' shared memory in one block)."""
        if work <= self.one_block_work and one_block_bytes <= shared:
            return 1
        return max(1, min(multiprocessors, elements))


@dataclass(frozen=True, slots=True)
class Wavefront:
    """A stack's forward as a wavefront: the sequence is cut into chunks of steps, and each layer runs on a stream
    of its own, chunk by chunk: its input GEMM over the chunk's rows, then the chunk's steps. Layer l starts chunk j
    once layer l-1 has finished chunk j (its y there is this layer's x, in place: Storage.stack_input) and it has
    finished chunk j-1 itself, so layer l+1 works on chunk j while layer l works on chunk j+1. A step of one layer
    rarely fills the GPU (at B = 256, H = 512 its GEMM is 32 tiles on 132 multiprocessors); L layers at once fill it
    up to L times better, and the whole stack takes about (chunks + L - 1) chunks' time where it took L * chunks.

    The cost model: used for every stack of 2 to 16 layers (cublas.MAX_LANES: each layer's GEMMs need a cuBLAS
    workspace of their own), its layers on the stepwise loop. A persistent kernel takes every multiprocessor, so it
    cannot overlap a layer with another; the wavefront of stepwise layers beat persistent layers one after the other
    at every stack shape measured (4 layers, fp32, T = 100, on the H200: B = 1, H = 256 1.7-2.1x faster; B = 16, H =
    512 1.6x; H = 1024 1.3x), so in a stack it wins over `persistent auto`; a forced `persistent` wins over
    `wavefront auto` (the layers then run their persistent kernels one after the other), a forced `wavefront` over
    both. The sequence is cut into `chunks` chunks of ceil(T / chunks) steps (the last one shorter): 8, 16 and 32
    chunks were within 10% of each other at those shapes and at B = 64 and 256."""

    chunks: int = 16
    forced: bool = False
    backward: bool = False  # the backward as a wavefront too (passes/wavefront.py, backward_blocker): the
    # layers from the top down, chunk by chunk in the backward loop's order; layer l's dy for a chunk is a
    # copy of layer l+1's dx there, made once layer l+1 has finished the chunk (the stack shares one dy and
    # one dx buffer: each chunk's rows are handed down it); each layer's parameter gradients after its last
    # chunk. The training buffers of one or two steps (state-gradient rings, scratch) are then each layer's own

    def steps(self, T: int) -> int:
        """Steps per chunk for a sequence of T steps."""
        return max(1, -(-T // self.chunks))


@dataclass(frozen=True, slots=True)
class Chunks:
    """A forward-only workspace's hoisted input products as a ring of one chunk's steps (Buffer.inference "C"):
    the forward then runs chunk by chunk, as a wavefront's layer does (passes/wavefront.py: its input GEMM over the
    chunk's rows, then the chunk's steps), so those products take ceil(T / chunks) steps of memory, not T (a vanilla
    LSTM's are 4H wide: at B = 256, H = 1024, T = 1000 in fp32, 4000 MiB become 252). The cost model: where they
    would take at least min_bytes at all T steps and the layer runs the stepwise loop (a persistent kernel reads
    every step's products in its one launch); in a stack that runs as a wavefront, the wavefront's chunks (so that
    its chunks and its layers' rings agree: measured on the H200, 4 layers, B = 256, T = 1000, 1.00x the time of
    all steps at once); a layer alone, chunks of at least min_rows rows (B x steps), its input GEMM over fewer
    rows slower (one layer at B = 256, H = 1024, T = 100: the wavefront's chunks of 7 steps took 1.08x the time in
    fp32 and 1.09x in bf16; at T = 1000, 63 steps, 1.01x; benchmarks/chunks.py)."""

    chunks: int = 16
    min_bytes: int = 1 << 26
    min_rows: int = 1 << 14

    def steps(self, T: int, nbytes: int, B: int, wave: int = 0) -> int:
        """Steps per chunk where the products of T steps of B rows take nbytes, in a stack's wavefront of chunks of
        `wave` steps (its own) or a layer alone (wave 0), else 0 (all T steps at once)."""
        steps = wave or max(Wavefront(self.chunks).steps(T), -(-self.min_rows // B))
        return steps if nbytes >= self.min_bytes and 2 <= steps < T else 0


@dataclass(frozen=True, slots=True)
class GemmWorkspace:
    """The cuBLAS workspace a layer's GEMMs run with, bytes a lane (runtime/cublas.py: a handle per lane and size;
    a stack's wavefront takes a lane per layer, so a 4-layer stack keeps four). cuBLAS's split-K kernels use it.

    The cost model, by the batch and the GEMMs' operand type: `full` (cuBLAS's recommended size on sm_90) for fp32 and
    tf32 GEMMs at B > small_batch, where the weight-gradient GEMMs use it (measured on the H200, T = 100: tf32
    training took 1.44x the time with 4 MiB at B = 16, H = 256, 4 layers; 1.18-1.20x at 64 x 512);
    `half` for half-precision GEMMs (1 MiB changed a bf16 call's time by -1..+6% from 1 x 512 to 256 x 1024);
    `small` at B <= small_batch, where the step loop's latency is the time and a GEMM over all T * B rows is a few
    microseconds of it: 1 MiB took 0.98-1.07x the GPU time at seven B = 1 shapes in fp32 and tf32 and put their
    memory under cuDNN's (1 x 256, one layer: 6 MiB, with 32 MiB 37, cuDNN 15), while at B = 4 it took 1.18-1.56x
    (on an H100: benchmarks/results/probes/gemm_workspace_h100_batch.txt); `small` too where every phase a
    workspace runs is one persistent kernel (a training workspace's forward and backward, a forward-only one's
    forward: its GEMMs are then only those over all T * B rows, no step's) and T * B <= persistent_rows: at 16 x 256
    and 16 x 512, T = 100, one layer, training took 0.96-1.02x the time by the call and went under cuDNN's memory
    (22.5 against 35.9 MiB, 51.9 against 74.5; same probe); past those rows the weight-gradient GEMMs over them
    were not measured without split-K's space.

    `wave` for the lanes of a stack's wavefront at B > small_batch (four lanes of `full` put 4-layer fp32 and tf32
    training 19-85 MiB over cuDNN's memory at 16 and 64 x 256 and 512 and 256 x 256 on the H200's grid), where each
    GEMM runs cuBLASLt's first kernel for a `full` limit (`first_kernels`) unless the bare handle is faster. That
    kernel is the one cublasGemmEx runs with `full`, and at B 16 and 64, H 256 and 512, T = 100 it needed at most
    16 MiB for every GEMM of a layer (on an H100: benchmarks/results/probes/gemm_workspace_need_h100.txt); a GEMM
    whose kernel needs more runs as cublasGemmEx chooses with `fallback`'s workspace. cublasGemmEx
    itself given less than `full` runs other kernels (the same ones from 24 MiB down to 8): a lane of 16 MiB that way
    took 1.05-1.33x the training time (probes/gemm_workspace_wave16_h100.txt); 8 MiB with cuBLASLt's fastest kernel
    under it, timed alone, 1.03-1.21x (probes/gemm_workspace_wave_lt8_h100.txt). This way took 1.00x the time of
    `full` lanes in every 4-layer fp32 and tf32 training case measured (B 16, 64 and 256, H 256 and 512, T 100 and
    1000), 64 MiB less a stack (probes/gemm_workspace_wave_first_h100.txt)."""

    full: int = 32 << 20
    half: int = 1 << 20
    small: int = 1 << 20
    small_batch: int = 1
    persistent_rows: int = 2048
    wave: int = 16 << 20

    def nbytes(self, B: int, half: bool, persistent_rows: int = 0, wave: bool = False) -> int:
        """The workspace of a GEMM at batch B (half: its operands are bf16 or fp16); persistent_rows: T * B where
        every phase its workspace runs is one persistent kernel, else 0; wave: it runs on a wavefront's lane."""
        if half:
            return self.half
        if B <= self.small_batch or 0 < persistent_rows <= self.persistent_rows:
            return self.small
        return self.wave if wave else self.full

    def fallback(self, nbytes: int) -> int:
        """The workspace of a GEMM on a lane of nbytes that runs first kernels (first_kernels) where that kernel needs
        more than nbytes (weight gradients at large shapes), or the addresses miss its alignment: cublasGemmEx's own
        choice with the lane's own workspace (the runtime gives a shape it never looked up `full`, cuBLAS's default).
        With `full` there a lane kept both sizes, 48 MiB, and 5 (fp32) and 6 (tf32) of the grids' 4-layer training
        shapes took 64 MiB more than with `full` lanes (16 x 1024 x 1000 to 256 x 512 x 1000); this way they take 64
        MiB less, at 0.99-1.00x the time in fp32 and 1.00-1.05x in tf32 (1.05x at 256 x 512 x 100, 1.03x at 64 x 512
        x 1000), and 3 of 48 shapes a precision are over cuDNN's training memory, not 10 (on an H100:
        benchmarks/results/probes/gemm_workspace_wave_fallback_h100.txt)."""
        return nbytes

    def gemmex(self, nbytes: int, looked_up: bool) -> int:
        """The workspace cublasGemmEx gets on a lane of nbytes that runs first kernels where none fits the shape:
        `fallback`'s where the runtime looked the shape's kernel up, else `full` (cuBLAS's default: tuning off)."""
        return self.fallback(nbytes) if looked_up else self.full

    def first_kernels(self, nbytes: int) -> bool:
        """Whether GEMMs with a workspace of nbytes run cuBLASLt's first kernel for that limit where they do not run
        bare (the wavefront's lanes: cublasGemmEx's own choice with less than `full` can be far slower)."""
        return nbytes == self.wave != self.full
