"""A seeded market simulation for the demo: markets that mark and resolve, agents that propose, an executor that
fills. Its own model and parameters, separate from the allocator's risk model (the allocator must not grade its
own homework); it talks to the allocator only through the book's log, as real agents and venues would."""

from allocator.service.numerics import pin

# Before anything loads numpy: the BLAS kernels every decision is made with (allocator/service/numerics.py).
pin()
