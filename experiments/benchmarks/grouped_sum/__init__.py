"""GPart's grouped sum (the backward P^T g) on CPU: today's code against candidates, and a C++ kernel."""
