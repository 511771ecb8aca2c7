"""Specs whose storage is unusual for the CUDA backend (found by review): gradients that are
incoming-gradient leaves, a vector gradient that is a leaf, delay lines, outputs that are inputs or old
states. Shared by tests/test_gpu.py (on a GPU) and tests/emulated/run_cases.py (without one)."""

UNUSUAL = {
    "delay_state": "cell d { input x; state h, s; s' = h; h' = tanh(W x + R s); output h' }",
    "delay_input": "cell d { input x; state h, s: input; s' = x; h' = tanh(W s + R h); output h' }",
    "output_x": "cell d { input x; state h; h' = tanh(W x + R h); output x }",
    "output_h": "cell d { input x; state h; h' = tanh(W x + R h); output h }",
    "vec_leaf": "cell d { input x; state h; a = tanh(W x + R h); h' = a + b; output a }",
    "leaf_both": "cell d { input x; state h, s; s' = h + b; h' = tanh(W x + R s); output h' }",
    "self_update": "cell d { input x; state h, c; c' = c; h' = tanh(W x + R h + U c); output h' }",
    "upd_hoisted": "cell d { input x; state h, s; s' = W x; h' = tanh(R s + Q h); output h' }",
    "shared_upd": "cell d { input x; state a, c; a' = tanh(W x + R a); c' = a'; output c' }",
    "input_elem": "cell d { input x; state h : input; h' = tanh(W x + R h) * x; output h' }",
    "output_gemm": "cell d { input x; state h, s : proj; h' = tanh(W x + R h + U s); y = P h'; s' = tanh(y); output y }",
    "vector_of_input": "cell e { input x; state h : input; h' = tanh(W x + R h) * (x + b); output h' }",
    # a saved activation that a recurrent product multiplies: its weight gradient reads it after the backward
    # kernel, so it must not go in place over the input products (Storage.in_place)
    "multiplied_gate": "cell d { input x; state h; a = tanh(W x + b + 0.5 * x); h' = tanh(U a + R h); output h' }",
    # a state named as the output's gradient once was: its backward read dy for its own gradient (ir.OUTPUT_GRAD)
    "state_named_output": "cell d { input x; state output; output' = tanh(W x + R output); output output' }",
}

# whole recurrent matrices stored head by head: they share their gradients' buffer with block-diagonal input
# matrices (passes/stacks.py interleaved); `persistent auto` must not give them a kernel reading that copy as if in
# order (tests/test_persistent_choice.py, tests/emulated/run_cases.py, tests/test_gpu.py)
HEADS_ON_INPUT = """cell hw { input x; state h, c; heads W_i, W_f, W_z, W_o
    i = sigmoid(W_i x + R_i h + b_i); f = sigmoid(W_f x + R_f h + b_f); z = tanh(W_z x + R_z h + b_z)
    o = sigmoid(W_o x + R_o h + b_o); c' = f * c + i * z; h' = o * tanh(c'); output h' }"""
