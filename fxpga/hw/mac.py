"""The MAC array: ``lanes`` multiply-accumulate units fed one broadcast operand per cycle."""

from __future__ import annotations

from amaranth import ClockSignal, Const, Instance, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .fanout import register_copies, share


class MACArray(wiring.Component):
    """``lanes`` signed multiply-accumulators sharing the activation operand ``a``.

    Each cycle lane ``l`` adds ``a · w[l]`` (zero when ``en`` is low) to its accumulator:

    - ``a``, ``w[l]`` and ``en`` are registered (the DSP input registers), the product is
      registered (the DSP pipeline register, and the register ECP5 needs around its
      MULT18X18D), then ``acc ← acc + p``.
    - **Latency** ``LATENCY + pre`` (``LATENCY = 3``): operands presented in cycle ``t`` are
      included in ``acc`` from cycle ``t + 3 + pre``; ``pre`` extra operand registers come
      first (they let the memories' outputs travel to the multipliers in a cycle of their own).
      ``w_pre`` (default ``pre``) of them are on ``w``: with fewer, ``w`` is presented that
      many cycles after ``a`` (its first registers are elsewhere, e.g. the weight memories'
      output registers).
      **Throughput**: one MAC per lane per cycle, never stalls.
    - **Widths**: the product is ``data_bits + weight_bits`` bits; ``acc`` is ``acc_bits`` and
      wraps modulo ``2^acc_bits``. By default it is never cleared (``acc ← acc + p`` is the
      form yosys packs into SB_MAC16 with no fabric around it and that never costs a cycle):
      a window's sum is the difference of two snapshots, exact whenever the true sum fits
      ``acc_bits`` (see ``PostProcessor``).
    - ``clear=True``: ``acc ← (clear ? 0 : acc) + p``, with ``clear`` high in the cycle ``acc``
      holds a window's sum (the post-processor's ``capture``), so ``acc`` is the sum itself.
      With ``groups > 1`` the lanes take ``clear`` from ``groups`` register copies made from
      ``clear_next`` (``clear`` one cycle early).
    - ``groups > 1``: ``a`` and ``en`` pass one register more than ``w``, kept in ``groups``
      copies that each feed ``lanes / groups`` multipliers (``fanout.register_copies``): ``a``
      and ``en`` are presented one cycle before their ``w``.
    - ``words > 1``: lane ``l`` takes ``a_wide[l mod words]`` instead of ``a`` (all equal but
      for a wide depthwise op, whose channels go one per lane); same timing.
    - ``reduce > 1`` (channel-split ops): a tree of ``log2(reduce)`` registered adder levels
      sums the products of lanes ``o·reduce … o·reduce + reduce − 1``, and while ``split``
      is high lane ``o < lanes / reduce`` accumulates that sum instead of its own product;
      every product passes as many registers, so latency is ``LATENCY + pre +
      log2(reduce)``. ``split`` must be steady from ``LATENCY + pre`` cycles before the
      first product it selects (it is an op's, and ops drain between them).
    """

    LATENCY = 3

    def __init__(
        self,
        lanes: int,
        data_bits: int,
        weight_bits: int,
        acc_bits: int,
        pre: int = 0,
        groups: int = 1,
        clear: bool = False,
        w_pre: int | None = None,
        words: int = 1,
        reduce: int = 1,
    ):
        self.lanes, self.pre, self.groups, self.clear_acc = lanes, pre, groups, clear
        self.words, self.reduce = words, reduce
        assert reduce & (reduce - 1) == 0 and lanes % reduce == 0
        self.w_pre = pre if w_pre is None else w_pre
        if not 0 <= self.w_pre <= pre:
            raise ValueError(f"w_pre must be 0..pre ({pre}), not {w_pre}")
        self.data_bits, self.weight_bits, self.acc_bits = data_bits, weight_bits, acc_bits
        ports = {}
        if words > 1:
            ports = {"a_wide": In(signed(data_bits)).array(words)}
        if reduce > 1:
            ports |= {"split": In(1)}
        super().__init__(
            ports
            | {
                "en": In(1),
                "a": In(signed(data_bits)),
                "w": In(signed(weight_bits)).array(lanes),
                "clear": In(1),
                "clear_next": In(1),
                "acc": Out(signed(acc_bits)).array(lanes),
            }
        )

    def _reduce(self, m, products):
        """The products as the accumulators take them with ``reduce`` (see the class)."""
        r = self.reduce
        levels = r.bit_length() - 1
        sums, delayed = list(products), list(products)
        for k in range(levels):
            width = self.data_bits + self.weight_bits + k + 1
            nxt = []
            for i in range(len(sums) // 2):
                s = Signal(signed(width), name=f"tree{k}_{i}", reset_less=True)
                m.d.sync += s.eq(sums[2 * i] + sums[2 * i + 1])
                nxt.append(s)
            sums = nxt  # (after the last level: one sum per group of r lanes)
            for lane, p in enumerate(delayed):
                q = Signal(
                    signed(self.data_bits + self.weight_bits),
                    name=f"p_d{k + 1}_{lane}",
                    reset_less=True,
                )
                m.d.sync += q.eq(p)
                delayed[lane] = q
        split = Signal(name="split_q")
        m.d.sync += split.eq(self.split)
        return [
            Mux(split, sums[lane], p) if lane < len(sums) else p for lane, p in enumerate(delayed)
        ]

    def _accumulate(self, m, platform, products):
        """``acc`` per lane from its registered product (see the class doc for ``clear``)."""
        if self.reduce > 1:
            products = self._reduce(m, products)
        clears = [None] * self.lanes
        if self.clear_acc:
            if self.groups > 1:
                copies = register_copies(m, self.clear_next, self.groups, platform, "acc_clr")
            else:
                copies = [self.clear]
            clears = share(copies, self.lanes)
        for lane, (p, clr) in enumerate(zip(products, clears, strict=True)):
            acc = Signal(signed(self.acc_bits), name=f"acc{lane}")
            m.d.sync += acc.eq((acc if clr is None else Mux(clr, 0, acc)) + p)
            m.d.comb += self.acc[lane].eq(acc)

    def elaborate(self, platform):
        m = Module()
        n, lanes, nw = self.groups, self.lanes, self.words
        # the operands: a[j][g] is word j's copy g (one word: the broadcast)
        words = list(self.a_wide) if nw > 1 else [self.a]
        a, w, en = [[x] * n for x in words], list(self.w), self.en
        if n > 1:  # the copies hold a masked operand: en is applied (None: no mask after)
            a = [
                register_copies(
                    m, Mux(en, x, 0), n, platform, f"a_bcast{j}" if nw > 1 else "a_bcast"
                )
                for j, x in enumerate(words)
            ]
            en = None

        def operand_regs(prefix):
            """A register per word and copy: ``[word][copy]``."""
            return [
                [
                    Signal(
                        signed(self.data_bits),
                        name=f"{prefix}{g}" + (f"_{j}" if nw > 1 else ""),
                        reset_less=True,
                    )
                    for g in range(n)
                ]
                for j in range(nw)
            ]

        for k in range(self.pre):
            a_k = operand_regs(f"a_pre{k}_")
            en_k = None if en is None else Signal(name=f"en_pre{k}")
            m.d.sync += [a_k[j][g].eq(a[j][g]) for g in range(n) for j in range(nw)]
            if en is not None:
                m.d.sync += en_k.eq(en)
            a, en = a_k, en_k
            if k < self.pre - self.w_pre:
                continue
            w_k = [
                Signal(signed(self.weight_bits), name=f"w_pre{k}_{i}", reset_less=True)
                for i in range(lanes)
            ]
            m.d.sync += [w_k[i].eq(w[i]) for i in range(lanes)]
            w = w_k
        if (
            getattr(platform, "family", None) == "ecp5"
            and max(self.data_bits, self.weight_bits) <= 18
        ):
            return self._ecp5(m, platform, a, w, en)
        # The operand and product registers have no reset: with one, yosys leaves the
        # accumulator's adder in fabric instead of packing it into SB_MAC16 (checked with
        # yosys 0.50: 8 lanes → 8 SB_MAC16 and no SB_CARRY). `en` is low during reset, so a
        # reset held for 2 cycles flushes them to 0 while `acc` is held at 0.
        a_r = operand_regs("a_r")
        m.d.sync += [
            a_r[j][g].eq(a[j][g] if en is None else Mux(en, a[j][g], 0))
            for g in range(n)
            for j in range(nw)
        ]
        products = []
        for lane, a_lane in enumerate(self._per_lane(a_r)):
            w_r = Signal(signed(self.weight_bits), name=f"w_r{lane}", reset_less=True)
            p_r = Signal(
                signed(self.data_bits + self.weight_bits), name=f"p_r{lane}", reset_less=True
            )
            m.d.sync += [w_r.eq(w[lane]), p_r.eq(a_lane * w_r)]
            products.append(p_r)
        self._accumulate(m, platform, products)
        return m

    def _per_lane(self, a):
        """Lane l's operand: word ``l mod words``, from the copy (group) that feeds l."""
        groups = [share(a[j], self.lanes) for j in range(self.words)]
        return [groups[lane % self.words][lane] for lane in range(self.lanes)]

    def _ecp5(self, m, platform, a_in, w_in, en):  # a_in[j][g]: word j's copy for group g
        """ECP5: the operand and product registers are the MULT18X18D's own (REG_INPUTA/B,
        REG_OUTPUT), so no fabric routing sits between them and the multiplier. Ports as
        yosys's ECP5 DSP techmap connects them, registers per Lattice TN1267; same latency."""
        D, WB, n = self.data_bits, self.weight_bits, self.groups
        a_g = a_in  # (copies: masked already, so the registers drive the multipliers)
        if en is not None:
            a_g = [
                [
                    Signal(signed(D), name=f"a_mux{g}" + (f"_{j}" if self.words > 1 else ""))
                    for g in range(n)
                ]
                for j in range(self.words)
            ]
            m.d.comb += [
                a_g[j][g].eq(Mux(en, a_in[j][g], 0)) for g in range(n) for j in range(self.words)
            ]
        products = []
        for lane, a in enumerate(self._per_lane(a_g)):
            p = Signal(36, name=f"p{lane}")
            w = w_in[lane]
            # 18-bit signed operands: bits past the width repeat the sign bit
            ports = {f"i_A{i}": a[min(i, D - 1)] for i in range(18)}
            ports |= {f"i_B{i}": w[min(i, WB - 1)] for i in range(18)}
            ports |= {f"i_C{i}": Const(0) for i in range(18)}
            ports |= {f"o_P{i}": p[i] for i in range(36)}
            m.submodules[f"mult{lane}"] = Instance(
                "MULT18X18D",
                p_REG_INPUTA_CLK="CLK0",
                p_REG_INPUTB_CLK="CLK0",
                p_REG_OUTPUT_CLK="CLK0",
                p_GSR="DISABLED",
                i_CLK0=ClockSignal(),
                i_CE0=1,
                i_RST0=0,
                i_SIGNEDA=1,
                i_SIGNEDB=1,
                i_SOURCEA=0,
                i_SOURCEB=0,
                **ports,
            )
            products.append(p[: D + WB].as_signed())
        self._accumulate(m, platform, products)
        return m
