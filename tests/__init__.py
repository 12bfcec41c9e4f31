"""The test suite. Before any test module loads numpy: the BLAS kernels every decision is made with
(allocator/service/numerics.py), as the `allocator` command asks for them."""

from allocator.service.numerics import pin

pin()
