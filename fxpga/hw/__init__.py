"""The accelerator: an Amaranth engine of MAC lanes run by a program of layer descriptors, the
compiler that lays a quantized model out for it (program, memory images, exact cycle counts),
and Amaranth-simulator helpers."""
