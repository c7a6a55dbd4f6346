"""From a trained float model to integers: the graph IR and its frontends (torch.fx,
torch.export), dynamic fixed-point quantization after Qiu et al. (FPGA 2016), the golden model
that defines every integer the hardware produces, the ``.fxq`` artifact, datasets, and the
built-in models with their shipped weights."""
