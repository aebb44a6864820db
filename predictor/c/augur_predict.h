/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * Augur's slow-I/O predictor, integer path: the model struct and the
 * forward pass over an encoded input vector. The arithmetic is the spec in
 * predictor/src/infer/mod.rs, to the bit; the Rust tests hold this C to it.
 *
 * The same file builds in the kernel (__KERNEL__) and in userspace, with no
 * floating point and no libc (only the freestanding <stdint.h> outside the
 * kernel). No array lives on the stack: a model with more than one hidden
 * layer needs a caller's struct augur_scratch for its hidden activations;
 * one hidden layer (the LinnOS shape) needs none, its dense, ReLU and output
 * accumulation being fused per hidden neuron.
 */
#ifndef AUGUR_PREDICT_H
#define AUGUR_PREDICT_H

#ifdef __KERNEL__
#include <linux/types.h>
#else
#include <stdint.h>
typedef int8_t s8;
typedef int16_t s16;
typedef int32_t s32;
typedef int64_t s64;
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
#endif

/* Limits of the model file format (predictor/src/model.rs). */
#define AUGUR_MAX_LAYERS 8
#define AUGUR_MAX_WIDTH 1024
#define AUGUR_MAX_INPUTS 47
#define AUGUR_MAX_OUTPUTS 2

/* Feature sets, numbered as in the model file. */
enum augur_feature_set {
	AUGUR_FS_LINNOS = 0,
	AUGUR_FS_HEIMDALL = 1,
	AUGUR_FS_LINNOS_EXT = 3,
	AUGUR_FS_LINNOS_WRITE = 4,
};

/* One quantized layer: out[o] = bias[o] + 2^s * sum_i weights[o][i] * u[i]. */
struct augur_layer {
	u32 inputs;
	u32 outputs;
	/* r: rounding right shift after the ReLU (hidden layers; 0 for the last). */
	u32 out_shift;
	/* 1 for a hidden (ReLU) layer, 0 for the last one. */
	u32 relu;
	/* Row-major [outputs][inputs], each in -32767..=32767. */
	const s16 *weights;
	const s64 *bias;
};

/* A model: what the generated C holds as a constant and the kernel module
 * fills from a model file. */
struct augur_model {
	u32 feature_set;
	u32 n_inputs;
	u32 n_layers;
	/* The model file's CRC-32 (its id). */
	u32 crc;
	struct augur_layer layers[AUGUR_MAX_LAYERS];
};

/* Room for the hidden activations of a model with two or more hidden layers
 * (8 KiB): per call, never shared between concurrent calls. */
struct augur_scratch {
	s32 a[AUGUR_MAX_WIDTH];
	s32 b[AUGUR_MAX_WIDTH];
};

/*
 * Scores one encoded input x (m->n_inputs values: LinnOS digits 0..9, or
 * Heimdall features scaled to 0..1024). Writes the last layer's outputs to
 * out (1 or 2 of them) and returns the score (out[1] - out[0], or out[0]):
 * above 0 means slow, 0 or below fast. scratch may be NULL for models with
 * at most one hidden layer; otherwise a NULL scratch scores 0 (fast).
 */
s64 augur_forward(const struct augur_model *m, const s32 *x, s64 *out,
		  struct augur_scratch *scratch);

/* augur_forward over n inputs laid end to end; one score each into scores. */
void augur_forward_batch(const struct augur_model *m, const s32 *xs, u32 n,
			 s64 *scores, struct augur_scratch *scratch);

/* The decision for a score (the tie rule: 0 is fast). */
static inline int augur_is_slow(s64 score)
{
	return score > 0;
}

#endif /* AUGUR_PREDICT_H */
