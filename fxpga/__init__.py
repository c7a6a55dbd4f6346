"""fxpga: trained PyTorch CNN → dynamic fixed point → Amaranth accelerator → open-toolchain FPGA."""

__version__ = "0.1.0"
