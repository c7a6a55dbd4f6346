"""The boards: iCEBreaker (iCE40UP5K), OrangeCrab 25F and ULX3S 85F (ECP5). Their engine
configurations and clocks, a UART top around the engine, bitstream builds with yowasp yosys +
nextpnr, the fit check, and the serial protocol ``fxpga run`` speaks."""
