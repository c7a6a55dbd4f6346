"""The engine's generated Verilog under cocotb (Verilator or Icarus): cached simulator builds,
stream drivers with random stalls, and image-by-image comparison with the golden model."""
