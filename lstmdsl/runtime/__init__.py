"""Stage 5: run a program on the GPU.

    device.py     the GPU as integer addresses and streams: launches, copies, fills, CUDA graphs
    nvrtc.py      compilation of generated CUDA and its cubin cache
    cublas.py     cuBLAS through ctypes (capturable into CUDA graphs)
    warmup.py     cuBLAS's one-time start on a thread of its own, while compile() parses and plans
    workspace.py  the buffers of one layer for one (T, B), as the plan's storage says
    issue.py      issues one phase of one layer (or a chunk of its forward) op by op onto a stream
    executor.py   the Engine: a stack of layers over its workspaces, as CUDA graphs, layer after layer or
                  as a wavefront
    layer.py      CudaLayer: the Layer API on CuPy arrays

Nothing here is imported before a user asks for backend="cuda": importing lstmdsl never touches CuPy.
"""

from .device import check_available

__all__ = ["check_available"]
