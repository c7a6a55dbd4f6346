"""cocotb regression of the generated Verilog (issue 4): nothing here yet."""
