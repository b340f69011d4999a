"""Torch kernels shared by the stages: min-max, CRF kernels, affinity, dense CRF."""
