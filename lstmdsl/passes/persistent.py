"""The persistent schedule: the whole recurrence as one launch that keeps the weights on chip.

The loop's ops become the stages of one cooperative kernel (plan.Persistent). Every per-step GEMM moves
into the kernel after it when only that kernel reads its results and the kernel does not reduce rows
(recurrent fusion's rule, without its restriction to operands ready at the start of the step: a grid
barrier separates the stages, so an operand computed in an earlier stage is complete), and so does a run
of GEMMs none of which reads another's products (FGR's four, on h and the three gates; under `no hoist
input`, the products of x and of h): one stage, not one per GEMM; any other GEMM becomes a stage of its
own that computes and stores its products. Each block keeps the weight rows of its
elements in shared memory for all steps, so a step reads no weights from memory, and one launch replaces
T launches (or 2T: the GEMM and the kernel of each step).

The stepwise loop stays in the plan beside it: the cost model (plan.Persistent) chooses between them once
the runtime knows the batch and the sizes. Under `persistent auto` the plan has the kernel only where the
cost model can choose it (the rules below, for the kinds of cells measured): a kernel for any other cell or precision would be compiled into every
module and never run (and cost its compilation; the layer norm's with lengths also spilled registers). A
block-diagonal matrix (heads: the sLSTM's) takes the kernel too: each block keeps its rows expanded to the
whole width, zero off the diagonal blocks (templates: the cached rows' `heads`), so its products are a whole
matrix's. Under `persistent` its stack keeps the matrices' own row order (stacks.interleaved); under `persistent
auto` (HEADS_LIMITS) the stack is stored head by head for the stepwise loop, the forward's kernel reads that
copy's rows (CachedWeights.order), and the backward's reads its columns there and stages each gate's
gradients by gathering them (StagedOperand.heads). A loop whose storage copies a value
between slots each step keeps it too (the calls pass drops the persistent launch there: its stages have no
copies).

The backward has one too where each of its per-step GEMMs computes one sum of transposed products (a
matvec_t: a state's gradient passed back through the recurrent matrices) and nothing else: each such GEMM
becomes a stage of its own, after the kernel that computes its operands (the gate gradients), and each
block keeps the columns of the matrices for its elements (rows of their transposes) in shared memory. A
GEMM that adds its products into a sum another op began (sum folding's `init`: GRU, MGU, zoneout and every
masked cell under the default `fold sums`, where the step's kernel computes the other term into the sum's slot)
is a stage of the products and then that addition; a backward with row reductions keeps the stepwise loop (layer and RMS norms: the layer norm's, one kernel of 38
stages, spilled registers).
Under `persistent auto` the backward has its kernel where the forward's is a single-stage cell with one
product operand that the cost model can choose, and BACKWARD_LIMITS or BACKWARD_SPLIT_LIMITS has rules for
the precision; the runtime chooses it by those rules. The rules were measured with the vanilla LSTM; with a
sum's init in the stage (2026-12-05, an H100, benchmarks/results/probes/ab_persistent_init_h100.txt, training
against the stepwise backward, T = 100, H = 256): zoneout 0.91-0.94x, vanilla and peephole with lengths
0.99-1.00x.
"""

from __future__ import annotations

import dataclasses
import itertools

from ..plan import Copy, Gemm, Kernel, Persistent, Plan, reduces
from .recurrent_fusion import _reads
from .stacks import interleaved, weight_stacks

# The cost model (`persistent auto`) per precision: rules (largest batch, least and most multiply-adds per
# step over the batch, in the kernel's products) where the persistent kernel is expected to beat the stepwise
# loop. Measured on the H200 with the vanilla LSTM, T = 100, fp32, against the stepwise loop with its per-step
# GEMMs timed both ways cuBLAS may run them (runtime/cublas.py tune), with the one-block kernel handing h to
# the next step in shared memory, a grid handing it on in tagged words where a step's words fit one round
# (Persistent.exchanges) and the products' matrix picked without local memory
# (benchmarks/results/persistent_round3_fp32_h200.md; persistent / stepwise time, forward): at B = 1 and 4 it
# wins at every H from 32 to 1024 (0.50-0.80x and 0.61-0.86x); at B = 16 from H = 64 (2^18: 0.59-0.92x) and
# ties at H = 32 (1.02x); at B = 64 it wins where the grid exchanges (H = 32 and 64, 2^18 and 2^20: 0.79x,
# 0.84x) and ties or loses above (0.95-1.54x). Earlier runs with the barrier only
# (persistent_local_fp32_h200.md) lost at B = 16, H <= 128 (0.95-1.06x): the hand-off is what wins there.
# Single-stage cells with recurrent products of one operand were measured here (others below): cells of more
# stages, with row reductions, with no recurrent products (IndRNN: its kernel would be one block whatever the
# size) or with the input's products in the loop (`no hoist input`: not measured) keep the stepwise loop under
# `auto`, as does float64; `persistent` forces it anywhere. In half precision (bf16 and fp16: the products on
# the tensor cores, h handed on in tagged words like float32's since the eleventh session) the kernel wins at
# B = 1 to H = 1024 and at B = 4 to H = 256 (benchmarks/results/persistent_half_fp16_h200.md and _bf16_: forced
# persistent against the stepwise loop, whose GEMMs use the tensor cores, forward: B = 1, H = 256/512/1024
# 0.76x/0.91x/0.90x in fp16, 0.75x/0.92x/0.89x in bf16; B = 4, H = 256 0.77x and 0.75x), ties at B = 4,
# H = 512 (0.91x and 1.01x) and loses past it (B = 4, H = 1024 1.03x; B = 16 1.05-1.34x; since the eighteenth
# session's cheaper step it wins at B = 2-16 too: HALF_LIMITS' third rule, below); the rules start at
# 2^18 (B = 1) and 2^19 (B <= 4), where the weights no longer fit one block, so every shape they choose runs
# the grid that was measured. Where all the weights fit one block (one block at B = 1, a grid splitting the
# batch above) the half kernel wins while a batch row's step is at most 2^14 multiply-adds (H <= 64 in the
# LSTM) at every B measured, 1 to 64 (twelfth session, benchmarks/results/persistent_half_small_fp16_h200.md,
# _bf16_ and persistent_half_split_fp16_h200.md, GPU time, forced against the stepwise loop, forward: H = 16
# and 32 0.54-0.57x, H = 64 0.75-0.79x in fp16 and bf16), and loses at 2^16 a row (H = 128: 1.25-1.33x, one
# block or split: a row's products on one multiprocessor): HALF_ROW_LIMITS, by a batch row's work. Between
# them (H = 96-160 at B <= 8, a grid over the elements with the blocks patched: 0.88-0.96x,
# probes/half_persistent_h200.txt) the margin is thin and the stepwise loop stays. Like HALF_LIMITS, these rules
# were measured with the vanilla LSTM and apply to every single-stage cell of one product operand (a cell of three
# gate matrices, CIFG's, keeps a row under 2^14 to H = 73). tf32 takes fp32's rules (set after
# MANY_ALONE_LIMITS): its persistent kernels are fp32's (their products strict fp32 multiply-adds; only cuBLAS's
# GEMMs, the hoisted input products, the weight gradients and a stepwise backward's, run on tf32 tensor cores),
# and in the grids of 2026-12-03 (docs/performance.md, "tf32 at small batch") fp32's auto, persistent, took
# 0.31-0.44x tf32's stepwise forward time at B = 1 and 0.58-0.96x at B = 16 (one layer; a stack runs the
# wavefront of stepwise layers in both).
# Where all the weights fit one block, a grid that splits the batch (each block all the weights and its own
# rows, Persistent.split_rows, at every B >= 2; one block at B = 1) wins to B = 256 at every H measured
# (SPLIT_LIMITS; benchmarks/results/persistent_split_fp32_h200.md, forced split against the stepwise loop,
# forward: B = 64, H = 32-100 0.54-0.64x, B = 256, H = 32 and 64 0.62x, 0.65x; against the grid that splits
# the elements 0.24-0.79x at B = 16-256 from H = 64, a tie at B = 16, H = 100; persistent_split_small_fp32_h200.md,
# against one block of all the rows 0.38-0.83x forward at B = 2-64, H = 16-64, and 1.07-1.10x forward against
# the element grid at H = 100, B = 2 and 8, where training still wins). It replaces a B <= 64 rule up to
# 2^20, most of whose shapes' weights fit one block (B = 17-64, H <= 64).
# Since the sixteenth session (its kernels compiled for their shape where Persistent.specialises says, and
# general where a grid exchanges at B > 4), the grid also wins at B = 32 and 64 wherever the weights fit (to 2^26:
# H <= 724 at B = 32, H <= 512 at B = 64; measured to H = 512) in a layer of one direction (benchmarks/results/probes/
# persistent_rule64_h200.txt, vanilla LSTM: `persistent auto` with this rule against the B <= 16 one, GPU time,
# T = 100, forward: B = 32, H = 128-512 0.56-0.78x, B = 64 0.83-0.91x; training 0.78-0.91x and 0.92-0.95x; B = 128
# loses, 1.40-1.48x forward at H = 128-256; B = 24 and 48, seventeenth session: 0.59-0.78x forward, 0.79-0.90x
# training), but not in the
# directions of a bidirectional layer, which run at once: two grids of one block a multiprocessor take turns
# (benchmarks/results/bidirectional_fp32_h200.md, 16 x 256: both directions at once 1.697 ms, one after the other
# 1.707), where the stepwise loops overlap (64 x 512: 6.23 ms against 8.06; with this rule in the directions
# 7.11, benchmarks/results/probes/bidirectional_rule64_h200.md), so there the B <= 16 rule stays (ALONE_LIMITS:
# Persistent.alone_work). Where the directions run one after the other (torch.compile, overlap_directions off:
# there the grids would win, 7.32 against 8.06 ms) they were kept on it too until the fifty-fourth session; since
# then such calls run engines of their own that are not `beside` (runtime/layer.py, torch/ops.py serial_handle),
# and this rule holds there (not measured again). The directions that run at once now share the multiprocessors
# (BESIDE_GRIDS, below) and have a rule of their own past B = 16 (BESIDE_LIMITS).
ALONE_LIMITS = {"fp32": ((64, 1, 1 << 26),), "bf16": (), "fp16": ()}
# Since the eighteenth session's cheaper step (benchmarks/results/probes/generic_step_h200.txt, GPU time, T = 100,
# forced persistent against the stepwise loop, fp16 forward: B = 16, H = 256 0.93x, H = 512 0.92x, B = 8, H = 1024
# 0.86x, B = 4, H = 1024 0.77x) the grid also wins at B = 2-16 from 2^21 to 2^25 multiply-adds a step (the
# backward kept the stepwise loop until BACKWARD_LIMITS had half-precision rules: below). Before it, 0.91-1.00x
# (probes/half_rule16_fp16_h200.txt, seventeenth session). Under `auto` with this rule against the rules before
# (nineteenth session, sections 8 and 10 of generic_step_h200.txt): fp16 forward 0.56-0.84x, training 0.82-0.92x at
# 2 x 512, 4 x 512, 8 x 256, 16 x 256, 16 x 512, 4 x 1024, 8 x 1024; bf16 0.57-0.84x and 0.82-0.93x at 16 x 256,
# 16 x 512, 8 x 1024, 4 x 512. From B = 2 (the rule's fourth number): B = 1 keeps its own rule, measured to 2^22
# (H = 1024); past it at B = 1 nothing was measured. Since the twenty-fourth session's tensor-core tiles over the
# gates' rows together (generic_step_h200.txt section 22) the third rule reaches 2^26 (section 23: `persistent auto`
# with it against the rule to 2^25, GPU time, T = 100: fp16 forward 0.85-0.87x, training 0.94-0.95x at 10 x 1024,
# 12 x 1024, 16 x 1024 and 16 x 768; bf16 0.86-0.87x and 0.94-0.95x at 12 x 1024 and 16 x 1024); past B = 16 the
# forced grid (forward and backward) was not a clear win (32 x 512 0.93x forward, 1.01x training; 32 x 256 0.95x
# and 1.15x; 64 x 256 1.14x and 1.37x; 24 x 1024 0.98x and 1.40x), so the rule stops at 16.
# The two directions of a bidirectional layer run at once (on two streams), but two grids of one block a
# multiprocessor cannot be resident together: they took turns (benchmarks/results/probes/packed_h200.txt's
# timeline). Each direction's grid over the elements now takes half the multiprocessors where its weights and
# staged rows still fit on chip there (else all of them, as before; not a grid that splits the batch), and the
# two run side by side (2026-12-06, fifty-fourth session,
# on an H100: `python3 benchmarks/probe_beside_grids.py`, the torch module's 2-layer bidirectional vanilla LSTM,
# fp32, T = 100, GPU time, half against all: forward 0.51-0.68x at B = 1 and 4, H = 256-512, 0.53-0.72x at B = 16,
# H = 128-512, padded and pre-packed; training 0.54-0.90x; 16 x 1024, whose weights do not fit half the
# multiprocessors, unchanged; benchmarks/results/probes/beside_grids_h100.txt). tf32 runs fp32's kernels. bf16 and
# fp16 (fifty-fifth session, the same probe with `--precision bf16|fp16`: float32 parameters, the input in the half
# type) gain as much: forward 0.61-0.71x at 1 x 512, 4 x 512, 16 x 256 and 16 x 512 padded (pre-packed 0.53-0.73x),
# training 0.79-0.88x (pre-packed 0.72-0.89x).
BESIDE_GRIDS = 2
BESIDE_MEASURED = ("fp32", "tf32", "bf16", "fp16")
# With the grids side by side, a direction's grid on its half of the multiprocessors wins past B = 16 too, where
# ALONE_LIMITS stops at a layer of one direction (2026-12-06, fifty-fifth session, H100, `python3
# benchmarks/probe_beside_grids.py --alone-rule`: the half grid under ALONE_LIMITS against the stepwise loop, 2-layer
# bidirectional vanilla LSTM, fp32, T = 100, GPU time, padded: forward 0.49x at 32 x 256 (2^23 multiply-adds a
# step), 0.74x at 32 x 512 (2^25), 0.71x at 64 x 256 (2^24); training 0.77x, 0.88x, 0.87x; pre-packed alike; but
# 64 x 512 (2^26) 1.19x and 1.08x; benchmarks/results/probes/beside_grids_h100.txt). On an H200 the same day, past
# 2^25 it lost again (48 x 512 1.11x forward, 64 x 384 1.23x), and tf32 (fp32's kernels against its stepwise loop on
# the tensor cores) won as fp32 did: forward 0.58x at 32 x 256, 0.87x at 32 x 512, 0.84x at 64 x 256, training
# 0.82-0.94x (GPU time, as every rule here; by the call 32 x 256 training took 1.06x and 64 x 256 pre-packed forward
# 1.07x). So B <= 64 to 2^25, in fp32 and tf32 (bf16 and fp16 past B = 16: not measured). Like ALONE_LIMITS it was
# measured with the vanilla LSTM and holds for every cell of one stage and one product operand (peephole, CIFG, ...).
BESIDE_LIMITS = {"fp32": ((64, 1, 1 << 25),), "tf32": ((64, 1, 1 << 25),), "bf16": (), "fp16": ()}
HALF_LIMITS = ((1, 1 << 18, 1 << 22), (4, 1 << 19, 1 << 20), (16, 1 << 21, 1 << 26, 2))  # (grids over the elements)
HALF_ROW_LIMITS = ((64, 1, 1 << 14),)  # (one block or a split grid, by a batch row's multiply-adds: Persistent.row_work)
LIMITS = {"fp32": ((16, 1, 1 << 26),), "bf16": HALF_LIMITS, "fp16": HALF_LIMITS}
SPLIT_LIMITS = {"fp32": ((256, 1, 1 << 26),), "bf16": (), "fp16": ()}
ROW_LIMITS = {"fp32": (), "bf16": HALF_ROW_LIMITS, "fp16": HALF_ROW_LIMITS}
# where `specialise auto` compiles kernels for their shape (benchmarks/results/specialise_h200.md, _bf16_, _fp16_)
SPECIALISE_MEASURED = ("fp32", "tf32", "bf16", "fp16")  # (tf32: fp32's kernels)
# The largest batch at which a grid that hands its state on in tagged words runs a kernel compiled for its shape
# (Persistent.specialise_batch). fp32 compiled is 1.18-1.39x slower at B = 8-16, H = 128-256. Half precision under
# auto, B <= 16 against B <= 4, GPU time (ab_small, probes/specialise_half_batch_h200.txt): fp16 forward 0.96x at
# 8 x 256, 0.92x at 8 x 512, 1.10x at 16 x 256 (bf16 0.95x, 0.94x, 1.10x); training 0.97-1.00x, 1.05-1.06x at 16 x 256
SPECIALISE_BATCH = {"fp32": 4, "tf32": 4, "bf16": 8, "fp16": 8}
# The backward's rules, from the same table's training rows (persistent forward and backward against the
# persistent forward and the stepwise backward): the backward kernel wins at B <= 4 from 2^22 (B = 1,
# H = 1024: 0.93x; B = 4, H = 512 and 1024: 0.87x, 0.72x), ties at B = 4, H = 256 and B = 16, H = 512
# (0.99x), and loses elsewhere (up to 1.5x at B = 1, H = 128 and 1.9x at B = 64, H = 1024).
# In bf16 and fp16 (twenty-eighth session, benchmarks/probe_rules.py --table BACKWARD_LIMITS --rule 16:1:67108864
# --modes train, GPU time, T = 100, training under `persistent auto` with the rule against without it; probes/
# generic_step_h200.txt section 37): fp16 B = 1, H = 512 0.85x, H = 1024 0.78x, B = 4, H = 512 0.86x, B = 16,
# H = 512 0.90x, H = 1024 0.87x (bf16 0.78x, 0.89x, 0.87x at 1 x 1024, 16 x 512, 16 x 1024); ties at 1 x 256
# (2^18, 1.00x) and 8 x 256 (2^21, 1.01-1.02x), loses at 16 x 256 (2^22, 1.05x). Between 2^22 and 2^24 at B = 5-16
# (twenty-ninth session, section 38, the same probe, fp16): the kernel wins at 8 x 512 (2^23, 0.89x), 12 x 512 (0.90x)
# and 6 x 512 (2^22.6, 0.90x) but loses at 16 x 300 (2^22.5, 1.48x), so the B = 5-16 rule starts at 2^23; without it
# 8 x 1024, 6 x 1024 and 12 x 768 (2^24.6-2^25) trained 1.19-1.22x slower (bf16 1.20-1.22x at 8 x 1024, 12 x 768).
# fp32 at B = 5-16 (thirtieth session, once a backward step met the grid once: calls._block_barriers; the same
# probe, `--precision fp32 --rule 16:2097152:67108864:5 ... --modes train`, section 41): 8 x 256 (2^21) 0.72x,
# 16 x 256 0.76x, 8 x 512 0.73x, 16 x 512 0.80x, 16 x 1024 (2^26) 0.98x at T = 100 (T = 1000: 0.75x, 0.80x, 0.97x
# at 16 x 256, 512, 1024), 16 x 128 (2^20) 0.86x, 6 x 256 0.75x; peephole 0.73-0.81x at 8 x 256, 16 x 512, 12 x 768.
# tf32 (its stepwise backward's GEMMs on the tensor cores) wins 0.78-0.89x to 16 x 512 (2^24) but loses 1.24x at
# 16 x 1024 (2^26): its B = 5-16 rule stops at 2^24 (2^24-2^26 not measured there).
# Half precision's B = 5-16 rule from 2^21 (thirty-first session, once a step met the grid once; the same probe,
# `--precision fp16 --rule 16:2097152:67108864:5`, section 42): 8 x 256 (2^21) 0.91x, 12 x 256 and 16 x 256 0.95x,
# 16 x 272-352 0.88-0.93x, 8 x 360 0.74x, 6 x 400 0.82x (bf16 within 0.01x of each); 16 x 300 lost 1.40x (8 x 300
# 1.19x, 12 x 300 1.32x) while a gate's slice of the gates' gradients, 4 mod 8 elements wide, was staged one element
# a load; copied in 8-byte words (pointwise.cu.j2: copy_words) it wins there too: 6-16 x 300 0.91-0.92x in fp16 and
# bf16, 16 x 256 1.00x in that run (the shipped rule against its absence).
HALF_BACKWARD_LIMITS = ((1, 1 << 20, 1 << 22), (4, 1 << 22, 1 << 26, 2), (16, 1 << 21, 1 << 26, 5))
BACKWARD_LIMITS = {"fp32": ((4, 1 << 22, 1 << 26), (16, 1 << 20, 1 << 26, 5)), "bf16": HALF_BACKWARD_LIMITS,
                   "fp16": HALF_BACKWARD_LIMITS}
TF32_BACKWARD_LIMITS = ((4, 1 << 22, 1 << 26), (16, 1 << 20, 1 << 24, 5))
# In a grid that splits the batch the backward kernel wins from 2^18 (the split table's training rows, forced
# split forward and backward against the stepwise loop: B = 64, H = 32-100 0.73-0.75x, B = 256, H = 32 and 64
# 0.76x, 0.75x; B = 16, H = 64 (2^18) ties with the split forward and stepwise backward, 1.03x).
BACKWARD_SPLIT_LIMITS = {"fp32": ((256, 1 << 18, 1 << 26),), "bf16": (), "fp16": ()}
# Cells of two stages, each with recurrent products of square matrices (GRU and MGU: r * h, then its
# product), a grid barrier between them: measured with the GRU (benchmarks/results/
# persistent_gru_fp32_h200.md, forced persistent against the stepwise loop, forward): a split grid wins
# at B = 16 and 64, H = 128 (0.87x, 0.57x); the element grid at B = 1, H = 512 (0.76x) and from 2^23
# (B = 16, H = 512 0.79x; B = 64, H = 256 and 512 0.92x, 0.96x), and loses at B = 16, H = 256 (3.1M,
# 1.15x); ties at B = 1 below 2^19. Under these rules (persistent_gru_rules_fp32_h200.md and
# persistent_mgu_rules_fp32_h200.md) GRU and MGU run at or below the stepwise loop's time at every shape;
# LSTMP (h, then its projection: matrices hidden x proj and proj x hidden) lost at 6 of 12 shapes (1.09-1.51x
# forward; B = 1, H = 128 1.51x, B = 64, H = 512 1.19x; persistent_lstmp_rules_fp32_h200.md) and keeps the
# stepwise loop. Their backward stays stepwise under `auto`. The B <= 64 rule holds in a bidirectional layer too,
# its directions' grids running at once (GRU, B = 32-64, H = 384-512: 0.81-0.97x forward, 0.90-0.98x training
# against the rule cut to B <= 16; probes/staged_bidirectional_h200.txt), unlike the vanilla LSTM's ALONE_LIMITS.
STAGED_LIMITS = {"fp32": ((1, 1 << 19, 1 << 26), (64, 1 << 23, 1 << 26)), "bf16": (), "fp16": ()}
STAGED_SPLIT_LIMITS = {"fp32": ((64, 1, 1 << 26),), "bf16": (), "fp16": ()}
# A stage of products of several operands (FGR: h and the three gates, a run of GEMMs moved whole into the
# kernel after it; any cell under `no hoist input`: x and h): no hand-off in tagged words, each operand
# staged each step. FGR forced (persistent_fgr_stage_fp32_h200.md, against the stepwise loop with its four
# GEMMs fanned out): wins at B = 1 from 2^19 (H = 256 and 512: 0.90x, 0.47x) and at H = 32 (0.64-0.97x
# forward at B = 1-64: all the weights in one block), loses elsewhere (H = 64-128: 1.1-1.9x, one block or
# split at H = 64 too; B = 4, H = 256 1.27x). H = 32 and 64 overlap in batch and work (B = 64, H = 32 and
# B = 16, H = 64 both under 2^20), which the rules cannot tell apart: only the B = 1 rule. Its backward
# kernel (five stages) lost everywhere (1.5-3.5x): stepwise.
MANY_LIMITS = {"fp32": ((1, 1 << 19, 1 << 26),), "bf16": (), "fp16": ()}
MANY_SPLIT_LIMITS = {"fp32": (), "bf16": (), "fp16": ()}
# Since the seventeenth session (kernels compiled for their shape) FGR's grid also wins at B = 4-16 from 2^23
# (benchmarks/results/probes/fgr_rules_h200.txt, benchmarks/probe_rules.py: `persistent auto` with the rule added
# against the rule above, GPU time, T = 100: forward B = 4, H = 512 0.63x, B = 8, H = 512 0.58x, B = 16, H = 256,
# 384, 512 0.87x, 0.64x, 0.75x; training 0.84-0.94x) and loses at B = 64 (H = 256 2.35x, H = 512 1.43x);
# in a layer of one direction only (a bidirectional layer's two grids would take turns where their stepwise
# loops overlap, as the vanilla one's did: ALONE_LIMITS; not measured for FGR). Shapes under 2^23 at B > 1
# (B = 4, H = 256 lost 1.27x before kernels were compiled for their shape) are not measured again.
MANY_ALONE_LIMITS = {"fp32": ((16, 1 << 23, 1 << 26),), "bf16": (), "fp16": ()}
# The sLSTM's block-diagonal matrices (heads): under `persistent auto` their stacks are stored head by head for the
# stepwise loop's one strided batch of GEMMs a step, and the forward's kernel reads that copy's rows (expanded in
# shared memory, zero off the diagonal blocks: `heads` times the blocks' multiply-adds). Both kernels, stacks in
# order (a forced `persistent`), against the stepwise loop (benchmarks/probe_heads.py, benchmarks/results/probes/
# heads_persistent_h200.txt, GPU time, T = 100): forward 0.33-0.82x at B <= 16, H = 256-1024, 1 and 4 heads;
# 1.19-1.36x at B = 64 with 4 heads. In tf32, bf16 and fp16 (the same probe, `--precision P --heads 4`,
# 2026-12-04; the stepwise loop's GEMMs on the tensor cores there): forward 0.36-0.74x at B <= 16 (tf32 16 x 1024
# 0.95x), 0.97-1.66x at B = 64. So B <= 16 in every precision.
HEADS_LIMITS = {p: ((16, 1, 1 << 26),) for p in ("fp32", "tf32", "bf16", "fp16")}
# Its backward kernel, stacks in order (a forced `persistent`) against auto with the forward's kernel only (the
# same probe, second run): training 0.46-0.95x at B <= 16 (both kernels), 1.19-1.45x at B = 64. Under auto the
# gates' gradients lie head by head: the kernel stages each gate's by gathering (stage_operand's hb, hp) and reads its
# columns from the head-by-head copy (CachedWeights.order). So measured (the probe, 2026-12-04): training 0.74-0.79x
# the forward-only auto's time at B = 16, H = 256-512, 0.94-0.99x at 1024, 0.60-0.90x at B = 1; the forced run's
# 0.95-1.06x this at B = 16, 0.76-0.96x at B = 1. In tf32, bf16 and fp16 (both kernels forced, 4 heads, against
# the stepwise loop): training 0.60-0.82x at B <= 16 but tf32's 16 x 1024 (2^26 multiply-adds a step, 1.15x: the
# stepwise backward's GEMMs on the tensor cores), 1.83-1.94x at B = 64. So tf32 to 2^24 (16 x 512 0.70x).
HEADS_BACKWARD_LIMITS = {"fp32": ((16, 1, 1 << 26),), "tf32": ((16, 1, 1 << 24),), "bf16": ((16, 1, 1 << 26),),
                         "fp16": ((16, 1, 1 << 26),)}
for _rules in (ALONE_LIMITS, LIMITS, SPLIT_LIMITS, ROW_LIMITS, BACKWARD_LIMITS, BACKWARD_SPLIT_LIMITS, STAGED_LIMITS,
               STAGED_SPLIT_LIMITS, MANY_LIMITS, MANY_SPLIT_LIMITS, MANY_ALONE_LIMITS):
    _rules["tf32"] = _rules["fp32"]  # (the same kernels: see the note above ALONE_LIMITS)
BACKWARD_LIMITS["tf32"] = TF32_BACKWARD_LIMITS  # (but not the same alternative: the note above HALF_BACKWARD_LIMITS)


def _interleaved(plan: Plan, gemm: Gemm, whole: bool = False) -> bool:
    """Whether a GEMM's matrices are stored head by head (stacks.interleaved: not under `persistent`): block-
    diagonal ones, whose gradients the backward's kernel would stage as one contiguous operand each (the
    forward's kernel reads the head-by-head copy's rows where they are: codegen, CachedWeights.order), or
    (whole) whole ones stored so because they share their gradients' buffer with a block-diagonal stack, which
    neither kernel reads from the copy."""
    stacks, heads = weight_stacks(plan), {p.name for p in plan.cell.params if p.heads}
    return any(set(stacks[v]) & set(gemm.matrices) - (heads if whole else set()) for v in interleaved(plan))


def persistent_stages(plan: Plan) -> tuple[Kernel, ...] | None:
    """The forward loop as the stages of a persistent kernel, or None where it cannot be one."""
    fwd = plan.forward
    nodes = fwd.nodes
    body = list(fwd.loop.body)
    if any(isinstance(op, Gemm) and _interleaved(plan, op, whole=True) for op in body):
        return None
    wanted = set(plan.saved) | set(plan.cell.updates) | {plan.cell.output}
    stages = []
    k = 0
    while k < len(body):
        op = body[k]
        if not isinstance(op, Gemm):
            stages.append(op)
            k += 1
            continue
        # a run of GEMMs that read none of each other's products (FGR's four, on h and the three gates) moves
        # whole into the kernel after it: one stage, not a stage (and a grid barrier) per GEMM
        m = k
        while m < len(body) and isinstance(body[m], Gemm):
            m += 1
        run = body[k:m]
        made = set().union(*(set(g.outputs) for g in run))
        later = set().union(*(_reads(other, nodes) for other in body[m + 1:]))
        nxt = body[m] if m < len(body) else None
        if (len(run) > 1 and isinstance(nxt, Kernel) and not nxt.joins and not reduces(fwd, nxt)
                and not (m + 1 < len(body) and getattr(body[m + 1], "joins", False))
                and not any(set(g.inputs) & made for g in run) and not made & (wanted | later)):
            stages.append(Kernel(tuple(i for g in run for i in g.outputs) + nxt.nodes))
            k = m + 1
            continue
        nxt = body[k + 1] if k + 1 < len(body) else None
        later = set().union(*(_reads(other, nodes) for other in body[k + 2:]))
        if (isinstance(nxt, Kernel) and not nxt.joins and not reduces(fwd, nxt)
                and not (k + 2 < len(body) and getattr(body[k + 2], "joins", False))
                and not set(op.outputs) & (wanted | later)):
            stages.append(Kernel(op.outputs + nxt.nodes))
            k += 2
        else:
            stages.append(Kernel(op.outputs))
            k += 1
    return tuple(stages)


def backward_stages(plan: Plan) -> tuple[Kernel, ...] | None:
    """The backward loop as the stages of a persistent kernel (each GEMM a stage of its transposed products),
    or None where it cannot be one."""
    bwd = plan.backward
    stages = []
    body = bwd.loop.body
    for k, op in enumerate(body):
        if isinstance(op, Gemm):
            if _interleaved(plan, op, whole=True) or len(op.outputs) != 1:
                return None
            if op.accumulate:  # the rest of a sum whose first GEMM began it (block-diagonal matrices: a GEMM
                # each, gate fusion keeps them apart); the stage computes the whole sum
                if op.init is not None or not (k and isinstance(body[k - 1], Gemm)
                                               and body[k - 1].outputs == op.outputs):
                    return None
                continue
            out = op.outputs[0]
            summed = _init_sum(bwd.nodes, out, op.init) if op.init is not None else None
            if (bwd.nodes[out].op != "matvec_t") if op.init is None else summed is None:
                return None
            run = [op] + list(itertools.takewhile(lambda g: isinstance(g, Gemm) and g.outputs == op.outputs
                                                  and g.accumulate and g.init is None, body[k + 1:]))
            product = out if summed is None else summed
            if sorted(m for g in run for m in g.matrices) != sorted(bwd.nodes[product].attr):
                return None
            # a sum that an earlier kernel began (sum folding's init p: the GEMM adds its products to p in the
            # output's slot) is the stage's products and then the addition p + products, as written
            stages.append(Kernel(op.outputs if summed is None else (summed, out)))
        elif isinstance(op, Kernel) and not reduces(bwd, op):
            stages.append(op)
        else:  # (row reductions: the layer norm's backward as one kernel of 38 stages spilled registers)
            return None
    return tuple(stages) if any(isinstance(op, Gemm) for op in bwd.loop.body) else None


def _init_sum(nodes, out: int, init: int) -> int | None:
    """The sum of transposed products m where a folded GEMM's output `out` is init + m (sum folding: the
    GEMM adds m to init in out's slot), or None where it is anything else."""
    n = nodes[out]
    if n.op != "add" or len(n.args) != 2 or init not in n.args:
        return None
    (m,) = [a for a in n.args if a != init] or (None,)
    return m if m is not None and nodes[m].op == "matvec_t" else None


def why_not_persistent(plan: Plan, phase_name: str) -> str | None:
    """Why a loop that the schedule forces persistent (`persistent`) still runs stepwise, in words for the user
    (`--emit plan` and lstmdsl.compile's warning); None where it runs persistent or the schedule does not force it."""
    phase = getattr(plan, phase_name)
    if plan.schedule.persistent != "on" or phase.loop.persistent is not None:
        return None
    body = phase.loop.body
    gemms = [op for op in body if isinstance(op, Gemm)]
    if not gemms:
        return "its step has no recurrent products to keep on chip"
    if any(isinstance(op, Copy) for op in body):
        return "its step copies a value between storage slots, and the persistent kernel's stages have no copies"
    if any(isinstance(op, Kernel) and reduces(phase, op) for op in body):
        return "a kernel of its step reduces rows (a norm), which the persistent kernel does not take there"
    if phase_name == "backward" and any(not isinstance(op, (Gemm, Kernel)) for op in body):
        return "its step accumulates the weight gradients (the schedule says `no batch weights`)"
    if phase_name == "backward" and any(op.accumulate or op.init is not None for op in gemms):
        return ("a per-step GEMM of its step adds into its output in a way the persistent stages do not take (a "
                "sum its kernel began that is not one sum of transposed products, or gates computed apart under "
                "`no fuse gates`)")
    if phase_name == "backward":
        return "a per-step GEMM of its step is more than one sum of transposed products"
    return "its step could not be cut into stages of products and pointwise work"


def make_persistent(plan: Plan) -> Plan:
    mode = plan.schedule.persistent
    if mode == "off":
        return plan
    stages = persistent_stages(plan)
    if stages is None:
        return plan
    # 256 threads: the products run as register tiles (templates: block_products) that need fewer threads to
    # hide shared memory's latency than one load per multiply-add did, and up to 255 registers each keep
    # kernels of several stages from spilling (at 512 threads, 128 registers, even the vanilla one spilled)
    products = [not reduces(plan.forward, st) and any(plan.forward.nodes[i].op == "matvec" for i in st.nodes)
                for st in stages]  # (IndRNN: no products)
    square = all(p.shape[0] == p.cols for p in plan.cell.params if p.kind == "matrix" and p.cols != "input")
    nodes = plan.forward.nodes
    operands = {a for st in stages for i in st.nodes if nodes[i].op == "matvec" for a in nodes[i].args}
    measured = not any(nodes[a].op == "input" for a in operands)  # (`no hoist input`: x's products, unmeasured)
    single = products == [True] and len(operands) == 1 and measured
    many = products == [True] and len(operands) > 1 and measured  # (FGR: products of h and three gates)
    staged = products == [True, True] and square and measured  # (LSTMP's projection: not square)
    precision = plan.schedule.precision
    work, split = ((LIMITS[precision], SPLIT_LIMITS[precision]) if single else
                   (MANY_LIMITS[precision], MANY_SPLIT_LIMITS[precision]) if many else
                   (STAGED_LIMITS[precision], STAGED_SPLIT_LIMITS[precision]) if staged else ((), ()))
    rows = ROW_LIMITS[precision] if single else ()
    alone = ALONE_LIMITS[precision] if single else MANY_ALONE_LIMITS[precision] if many else ()
    heads = {p.name for p in plan.cell.params if p.heads}
    blocks = any(nodes[i].attr in heads for st in stages for i in st.nodes if nodes[i].op == "matvec")
    if blocks:  # the kernel's products of block-diagonal matrices (the sLSTM's): their own rules only
        work, split, rows, alone = HEADS_LIMITS[precision] if single else (), (), (), ()
    work, split, rows, alone = (work, split, rows, alone) if plan.dtype == "f32" else ((), (), (), ())
    if mode == "auto" and not work + split + rows + alone:  # (beside_work is only a `single` cell's: work too)
        return plan  # the cost model would never choose it: no kernel compiled into every module to sit unused
    # `specialise auto` compiles kernels per shape only where that was measured (float32 layers in precision
    # fp32, tf32 (fp32's kernels), bf16 and fp16: loops.py, Persistent.specialises);
    # `specialise` forces it in every precision
    measured_special = precision in SPECIALISE_MEASURED and plan.dtype == "f32"
    beside = BESIDE_GRIDS if precision in BESIDE_MEASURED and plan.dtype == "f32" else 1
    beside_work = BESIDE_LIMITS[precision] if single and not blocks and beside > 1 else ()  # (float32 layers)
    pers = Persistent(stages, forced=mode == "on", threads=256, work=work, split_work=split, row_work=rows,
                      alone_work=alone, specialise=plan.schedule.specialise, specialise_auto=measured_special,
                      specialise_batch=SPECIALISE_BATCH[precision], beside_grids=beside, beside_work=beside_work)
    loop = dataclasses.replace(plan.forward.loop, persistent=pers)
    plan = dataclasses.replace(plan, forward=dataclasses.replace(plan.forward, loop=loop))
    back_work = (HEADS_BACKWARD_LIMITS[precision] if blocks else BACKWARD_LIMITS[precision]) if single and work else ()
    back_split = BACKWARD_SPLIT_LIMITS[precision] if single and split else ()
    back = backward_stages(plan) if mode == "on" or back_work + back_split else None
    if back is None:
        return plan
    loop = dataclasses.replace(plan.backward.loop, persistent=Persistent(
        back, forced=mode == "on", threads=256, work=back_work, split_work=back_split,
        specialise=plan.schedule.specialise, specialise_auto=measured_special,
        specialise_batch=SPECIALISE_BATCH[precision], beside_grids=beside))
    return dataclasses.replace(plan, backward=dataclasses.replace(plan.backward, loop=loop))
