// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * Augur's slow-I/O predictor, integer path (see augur_predict.h and the
 * spec in predictor/src/infer/mod.rs, whose step numbers the comments
 * use). Three per-layer templates: a dense layer with ReLU into a buffer
 * (dense_relu), the input rescaling of hidden layers after the first
 * (rescale16, step 2b), and a dense layer with ReLU whose every output is
 * folded at once into the last layer's accumulators (dense_relu_out), so
 * the last hidden layer is never stored. Every sum is exact in s64 (the
 * spec's bounds); nothing here shifts a negative value.
 */
#include "augur_predict.h"

#define AUGUR_ACT_MAX 2147483647LL /* 2^31 - 1, step 3's clamp */
#define AUGUR_IN16_BITS 16
#define AUGUR_IN16_MAX 65535

/* Step 3: ReLU, rounding right shift by r (round half up), clamp. */
static inline s32 relu_shift(s64 acc, u32 r)
{
	s64 v = acc > 0 ? acc : 0;

	if (r > 0)
		v = (v + ((s64)1 << (r - 1))) >> r;
	if (v > AUGUR_ACT_MAX)
		v = AUGUR_ACT_MAX;
	return (s32)v;
}

/* sum_i w[i] * u[i], exact in s64 (any order). Four independent sums, so
 * the multiply-adds overlap instead of waiting on one another. */
static inline s64 dot(const s16 *w, const s32 *u, u32 n)
{
	s64 s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	u32 i = 0;

	for (; i + 4 <= n; i += 4) {
		s0 += (s64)w[i] * (s64)u[i];
		s1 += (s64)w[i + 1] * (s64)u[i + 1];
		s2 += (s64)w[i + 2] * (s64)u[i + 2];
		s3 += (s64)w[i + 3] * (s64)u[i + 3];
	}
	for (; i < n; i++)
		s0 += (s64)w[i] * (s64)u[i];
	return s0 + s1 + s2 + s3;
}

/* Step 2 for one output: bias + 2^s * dot (a multiplication, not a shift,
 * since the dot product may be negative). */
static inline s64 neuron(const struct augur_layer *l, u32 o, const s32 *u,
			 u32 s)
{
	return l->bias[o] + dot(l->weights + (u64)o * l->inputs, u, l->inputs) *
				    ((s64)1 << s);
}

/* Step 2b: rescales x (n values, 0..2^31-1) in place to 16 bits; returns s. */
static u32 rescale16(s32 *x, u32 n)
{
	s32 mx = 0;
	u32 bits = 0, s, i;
	u32 v;

	for (i = 0; i < n; i++)
		if (x[i] > mx)
			mx = x[i];
	for (v = (u32)mx; v; v >>= 1)
		bits++;
	s = bits > AUGUR_IN16_BITS ? bits - AUGUR_IN16_BITS : 0;
	if (s == 0)
		return 0;
	for (i = 0; i < n; i++) {
		u64 u = ((u64)(u32)x[i] + ((u64)1 << (s - 1))) >> s;

		x[i] = u > AUGUR_IN16_MAX ? AUGUR_IN16_MAX : (s32)u;
	}
	return s;
}

/* A hidden layer into a buffer: y[o] = step 3 of step 2. */
static void dense_relu(const struct augur_layer *l, const s32 *u, u32 s,
		       s32 *y)
{
	u32 o;

	for (o = 0; o < l->outputs; o++)
		y[o] = relu_shift(neuron(l, o, u, s), l->out_shift);
}

/* The last hidden layer fused with the last layer: each hidden output, once
 * computed, is multiplied into every output accumulator (started at the
 * last layer's biases). */
static void dense_relu_out(const struct augur_layer *l, const s32 *u, u32 s,
			   const struct augur_layer *last, s64 *out)
{
	u32 o, j;

	for (j = 0; j < last->outputs; j++)
		out[j] = last->bias[j];
	for (o = 0; o < l->outputs; o++) {
		s32 h = relu_shift(neuron(l, o, u, s), l->out_shift);

		if (h == 0)
			continue; /* exact: it adds nothing */
		for (j = 0; j < last->outputs; j++)
			out[j] += (s64)last->weights[(u64)j * last->inputs + o] *
				  (s64)h;
	}
}

s64 augur_forward(const struct augur_model *m, const s32 *x, s64 *out,
		  struct augur_scratch *scratch)
{
	const struct augur_layer *last = &m->layers[m->n_layers - 1];
	u32 hidden = m->n_layers - 1, k, j;
	const s32 *u = x;
	u32 s = 0;

	if (hidden == 0) {
		/* No hidden layer: the last layer straight on the input. */
		for (j = 0; j < last->outputs; j++)
			out[j] = neuron(last, j, x, 0);
	} else {
		if (hidden > 1 && !scratch) {
			for (j = 0; j < last->outputs; j++)
				out[j] = 0;
			return 0;
		}
		/* Hidden layers before the last one, through the scratch
		 * buffers (layer 1 on the input itself, s = 0). */
		for (k = 0; k + 1 < hidden; k++) {
			s32 *y = (k % 2 == 0) ? scratch->a : scratch->b;

			dense_relu(&m->layers[k], u, s, y);
			s = rescale16(y, m->layers[k].outputs);
			u = y;
		}
		dense_relu_out(&m->layers[hidden - 1], u, s, last, out);
	}
	/* Step 5. */
	if (last->outputs == 2)
		return out[1] - out[0];
	return out[0];
}

void augur_forward_batch(const struct augur_model *m, const s32 *xs, u32 n,
			 s64 *scores, struct augur_scratch *scratch)
{
	s64 out[AUGUR_MAX_OUTPUTS];
	u32 i;

	for (i = 0; i < n; i++)
		scores[i] = augur_forward(m, xs + (u64)i * m->n_inputs, out,
					  scratch);
}
