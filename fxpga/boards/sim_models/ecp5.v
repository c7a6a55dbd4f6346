// Behavioural models of the ECP5 primitives fxpga instantiates directly (FD1S3AX, MULT18X18D,
// DP16KD), for simulating engines elaborated for an ECP5 platform. Written for fxpga from the
// primitives' documented behaviour (Lattice TN1267 sysDSP, TN1264 memory); only the modes
// fxpga uses are modelled, any other stops the simulation. Not timing models.

// D flip-flop, clears to 0 at configuration (GSR is disabled on every instance fxpga makes).
module FD1S3AX (input D, input CK, output reg Q);
    parameter GSR = "ENABLED";
    initial Q = 1'b0;
    always @(posedge CK) Q <= D;
endmodule

// 18x18 multiplier: A, B and the product registered on CLK0 (REG_INPUTA/B_CLK and
// REG_OUTPUT_CLK "CLK0", no pipeline register), signedness from SIGNEDA/SIGNEDB, C unused.
module MULT18X18D (
    input A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0,
    input B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0,
    input C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0,
    input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB,
    input CLK0, CE0, RST0,
    output P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19,
    output P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0
);
    parameter REG_INPUTA_CLK = "NONE";
    parameter REG_INPUTB_CLK = "NONE";
    parameter REG_PIPELINE_CLK = "NONE";
    parameter REG_OUTPUT_CLK = "NONE";
    parameter GSR = "ENABLED";
    initial begin
        if (REG_INPUTA_CLK != "CLK0" || REG_INPUTB_CLK != "CLK0" || REG_OUTPUT_CLK != "CLK0"
            || REG_PIPELINE_CLK != "NONE") begin
            $display("MULT18X18D model: only inputs and output registered on CLK0");
            $finish;
        end
    end
    wire [17:0] A = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0};
    wire [17:0] B = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};
    reg [17:0] a_r = 0, b_r = 0;
    reg sa_r = 0, sb_r = 0;
    reg [35:0] p_r = 0;
    wire signed [36:0] a_x = {{19{sa_r & a_r[17]}}, a_r};
    wire signed [36:0] b_x = {{19{sb_r & b_r[17]}}, b_r};
    wire signed [73:0] prod = a_x * b_x;
    always @(posedge CLK0) begin
        if (RST0) begin
            a_r <= 0; b_r <= 0; p_r <= 0;
        end else if (CE0) begin
            a_r <= A; b_r <= B; sa_r <= SIGNEDA; sb_r <= SIGNEDB;
            p_r <= prod[35:0];
        end
    end
    assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19,
            P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0} = p_r;
endmodule

// 16 Kbit true dual-port block RAM as fxpga uses it: port A writes, port B reads, both ports
// DATA_WIDTH 9 (2048 words; address on AD13..AD3) or 18 (1024 words; AD13..AD4, AD1..AD0 the
// byte enables), WRITEMODE NORMAL, chip selects 0. REGMODE_B "OUTREG": the read data passes
// the output register (clocked by CLKB, enabled by OCEB), so it appears 2 cycles after its
// address instead of 1. INITVAL_00..3F: 16 rows of 20 bits each, the 18 data bits of row r at
// [20 * (r % 16) +: 18] of INITVAL_(r / 16); a 9-bit word w is the half [9 * (w % 2) +: 9] of
// row w / 2.
module DP16KD (
    input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0,
    input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
    input CEA, OCEA, CLKA, WEA, RSTA,
    input CSA2, CSA1, CSA0,
    output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0,
    input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0,
    input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
    input CEB, OCEB, CLKB, WEB, RSTB,
    input CSB2, CSB1, CSB0,
    output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0
);
    parameter DATA_WIDTH_A = 18;
    parameter DATA_WIDTH_B = 18;
    parameter REGMODE_A = "NOREG";
    parameter REGMODE_B = "NOREG";
    parameter RESETMODE = "SYNC";
    parameter ASYNC_RESET_RELEASE = "SYNC";
    parameter CSDECODE_A = "0b000";
    parameter CSDECODE_B = "0b000";
    parameter WRITEMODE_A = "NORMAL";
    parameter WRITEMODE_B = "NORMAL";
    parameter GSR = "ENABLED";
    parameter [319:0] INITVAL_00 = 0, INITVAL_01 = 0, INITVAL_02 = 0, INITVAL_03 = 0;
    parameter [319:0] INITVAL_04 = 0, INITVAL_05 = 0, INITVAL_06 = 0, INITVAL_07 = 0;
    parameter [319:0] INITVAL_08 = 0, INITVAL_09 = 0, INITVAL_0A = 0, INITVAL_0B = 0;
    parameter [319:0] INITVAL_0C = 0, INITVAL_0D = 0, INITVAL_0E = 0, INITVAL_0F = 0;
    parameter [319:0] INITVAL_10 = 0, INITVAL_11 = 0, INITVAL_12 = 0, INITVAL_13 = 0;
    parameter [319:0] INITVAL_14 = 0, INITVAL_15 = 0, INITVAL_16 = 0, INITVAL_17 = 0;
    parameter [319:0] INITVAL_18 = 0, INITVAL_19 = 0, INITVAL_1A = 0, INITVAL_1B = 0;
    parameter [319:0] INITVAL_1C = 0, INITVAL_1D = 0, INITVAL_1E = 0, INITVAL_1F = 0;
    parameter [319:0] INITVAL_20 = 0, INITVAL_21 = 0, INITVAL_22 = 0, INITVAL_23 = 0;
    parameter [319:0] INITVAL_24 = 0, INITVAL_25 = 0, INITVAL_26 = 0, INITVAL_27 = 0;
    parameter [319:0] INITVAL_28 = 0, INITVAL_29 = 0, INITVAL_2A = 0, INITVAL_2B = 0;
    parameter [319:0] INITVAL_2C = 0, INITVAL_2D = 0, INITVAL_2E = 0, INITVAL_2F = 0;
    parameter [319:0] INITVAL_30 = 0, INITVAL_31 = 0, INITVAL_32 = 0, INITVAL_33 = 0;
    parameter [319:0] INITVAL_34 = 0, INITVAL_35 = 0, INITVAL_36 = 0, INITVAL_37 = 0;
    parameter [319:0] INITVAL_38 = 0, INITVAL_39 = 0, INITVAL_3A = 0, INITVAL_3B = 0;
    parameter [319:0] INITVAL_3C = 0, INITVAL_3D = 0, INITVAL_3E = 0, INITVAL_3F = 0;

    localparam [20479:0] INIT = {
        INITVAL_3F, INITVAL_3E, INITVAL_3D, INITVAL_3C, INITVAL_3B, INITVAL_3A, INITVAL_39, INITVAL_38,
        INITVAL_37, INITVAL_36, INITVAL_35, INITVAL_34, INITVAL_33, INITVAL_32, INITVAL_31, INITVAL_30,
        INITVAL_2F, INITVAL_2E, INITVAL_2D, INITVAL_2C, INITVAL_2B, INITVAL_2A, INITVAL_29, INITVAL_28,
        INITVAL_27, INITVAL_26, INITVAL_25, INITVAL_24, INITVAL_23, INITVAL_22, INITVAL_21, INITVAL_20,
        INITVAL_1F, INITVAL_1E, INITVAL_1D, INITVAL_1C, INITVAL_1B, INITVAL_1A, INITVAL_19, INITVAL_18,
        INITVAL_17, INITVAL_16, INITVAL_15, INITVAL_14, INITVAL_13, INITVAL_12, INITVAL_11, INITVAL_10,
        INITVAL_0F, INITVAL_0E, INITVAL_0D, INITVAL_0C, INITVAL_0B, INITVAL_0A, INITVAL_09, INITVAL_08,
        INITVAL_07, INITVAL_06, INITVAL_05, INITVAL_04, INITVAL_03, INITVAL_02, INITVAL_01, INITVAL_00
    };

    reg [17:0] rows [0:1023];
    integer r;
    initial begin
        if (DATA_WIDTH_A != DATA_WIDTH_B || (DATA_WIDTH_A != 9 && DATA_WIDTH_A != 18)
            || REGMODE_A != "NOREG" || WRITEMODE_A != "NORMAL" || WRITEMODE_B != "NORMAL"
            || CSDECODE_A != "0b000" || CSDECODE_B != "0b000") begin
            $display("DP16KD model: only equal 9- or 18-bit ports, NORMAL writes, no chip select");
            $finish;
        end
        for (r = 0; r < 1024; r = r + 1) rows[r] = INIT[20 * r +: 18];
    end

    wire [17:0] DIA = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0};
    wire [13:0] ADA = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0};
    wire [13:0] ADB = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0};
    wire wide = DATA_WIDTH_A == 18;

    always @(posedge CLKA) begin
        if (CEA && WEA && !RSTA && !CSA2 && !CSA1 && !CSA0) begin
            if (wide) begin
                if (ADA[0]) rows[ADA[13:4]][8:0] <= DIA[8:0];
                if (ADA[1]) rows[ADA[13:4]][17:9] <= DIA[17:9];
            end else if (ADA[3]) begin
                rows[ADA[13:4]][17:9] <= DIA[8:0];
            end else begin
                rows[ADA[13:4]][8:0] <= DIA[8:0];
            end
        end
    end

    reg [17:0] rd = 0, rd_q = 0;
    always @(posedge CLKB) begin
        if (RSTB) begin
            rd <= 0;
            rd_q <= 0;
        end else begin
            if (CEB && !WEB && !CSB2 && !CSB1 && !CSB0)
                rd <= wide ? rows[ADB[13:4]] : {9'b0, ADB[3] ? rows[ADB[13:4]][17:9] : rows[ADB[13:4]][8:0]};
            if (OCEB) rd_q <= rd;
        end
    end
    wire [17:0] DOB = REGMODE_B == "OUTREG" ? rd_q : rd;
    assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0} = DOB;
    assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0} = 18'b0;
endmodule
