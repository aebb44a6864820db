// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * Augur's model file parser (see augur_model.h). Every read goes through
 * take(), which checks it against the bytes left, so no input can make it
 * read outside buf; every count is bounded before it is multiplied.
 */
#include "augur_model.h"

#ifdef __KERNEL__
#include <linux/crc32.h>
#include <linux/errno.h>
#include <linux/string.h>
#else
#include <errno.h>
#include <string.h>
#endif

#define MAGIC "AUGURMDL"
#define VERSION 1
#define MAX_STR 4096u
#define MAX_METRIC_NAME 256u
#define MAX_METRICS 64u
#define W_QMAX 32767
#define B1_QMAX ((s64)1 << 30)
#define B_QMAX ((s64)1 << 40)
#define MIN_WEIGHT_EXP (-32)
#define MAX_WEIGHT_EXP 40
#define MAX_OUT_SHIFT 62u
#define MAX_ACT_EXP 64
#ifndef AUGUR_FUZZ_NO_CRC
#define AUGUR_FUZZ_NO_CRC 0
#endif

struct cursor {
	const u8 *p;
	size_t left;
};

/* The next n bytes, or NULL when fewer are left. */
static const u8 *take(struct cursor *c, size_t n)
{
	const u8 *p = c->p;

	if (n > c->left)
		return NULL;
	c->p += n;
	c->left -= n;
	return p;
}

static u32 le32(const u8 *p)
{
	return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24;
}

static u64 le64(const u8 *p)
{
	return (u64)le32(p) | (u64)le32(p + 4) << 32;
}

static u32 crc32_ieee(const u8 *p, size_t n)
{
#ifdef __KERNEL__
	return crc32_le(~0u, p, n) ^ ~0u;
#else
	u32 crc = ~0u;
	size_t i;
	int b;

	for (i = 0; i < n; i++) {
		crc ^= p[i];
		for (b = 0; b < 8; b++)
			crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1)));
	}
	return ~crc;
#endif
}

static int n_inputs_of(u32 fs)
{
	switch (fs) {
	case AUGUR_FS_LINNOS:
		return 31;
	case AUGUR_FS_HEIMDALL:
		return 12;
	case AUGUR_FS_LINNOS_EXT:
		return 39;
	case AUGUR_FS_LINNOS_WRITE:
		return 47;
	default:
		return -1;
	}
}

/* A metadata string: u32 length (at most max) and its bytes. */
static int skip_str(struct cursor *c, u32 max)
{
	const u8 *p = take(c, 4);

	if (!p)
		return -EINVAL;
	if (le32(p) > max)
		return -E2BIG;
	return take(c, le32(p)) ? 0 : -EINVAL;
}

/* Bytes a model with these layer shapes needs in memory (8-aligned parts). */
static size_t align8(size_t n)
{
	return (n + 7) & ~(size_t)7;
}

#define FAIL(err, msg)            \
	do {                      \
		*why = (msg);     \
		return (err);     \
	} while (0)

int augur_model_check(const u8 *buf, size_t len, size_t *need,
		      const char **why)
{
	struct cursor c = { buf, len };
	const u8 *p, *wq, *bq;
	u32 fs, n_layers, n_inputs, flags, k, i, prev;
	s32 act_exp;
	size_t total = align8(sizeof(struct augur_model));
	int err;

	*why = "";
	if (len > AUGUR_MODEL_MAX_BYTES)
		FAIL(-E2BIG, "model file larger than 32 MiB");
	p = take(&c, 8);
	if (!p || memcmp(p, MAGIC, 8) != 0)
		FAIL(-EINVAL, "not an Augur model file (bad magic)");
	p = take(&c, 4);
	if (!p)
		FAIL(-EINVAL, "truncated in the header");
	if ((p[0] | p[1] << 8) != VERSION)
		FAIL(-EOPNOTSUPP, "model format version is not 1");
	fs = p[2];
	n_layers = p[3];
	if (fs == 2)
		FAIL(-EOPNOTSUPP, "feature set 2 (an earlier linnos-ext) is retired");
	if (n_inputs_of(fs) < 0)
		FAIL(-EOPNOTSUPP, "unknown feature set");
	if (n_layers < 1 || n_layers > AUGUR_MAX_LAYERS)
		FAIL(-E2BIG, "number of layers not in 1..=8");
	p = take(&c, 8);
	if (!p)
		FAIL(-EINVAL, "truncated in the header");
	n_inputs = le32(p);
	flags = le32(p + 4);
	if (n_inputs != (u32)n_inputs_of(fs))
		FAIL(-EINVAL, "number of inputs does not match the feature set");
	if (flags != (fs == AUGUR_FS_HEIMDALL ? 1u : 0u))
		FAIL(-EINVAL, "flags: the scaler bit must be set for heimdall only");
	if (flags & 1) {
		/* The f32 scaler (min, then max): present, not used here. */
		if (!take(&c, (size_t)8 * n_inputs))
			FAIL(-EINVAL, "truncated in the scaler");
	}
	prev = n_inputs;
	act_exp = fs == AUGUR_FS_HEIMDALL ? 10 : 0;
	for (k = 0; k < n_layers; k++) {
		u32 n, m, act, r;
		s32 e;
		size_t nw;
		int last = k + 1 == n_layers;

		p = take(&c, 12);
		if (!p)
			FAIL(-EINVAL, "truncated in a layer header");
		n = le32(p);
		m = le32(p + 4);
		act = p[8];
		e = (s8)p[9];
		r = p[10];
		if (n < 1 || n > AUGUR_MAX_WIDTH || m < 1 || m > AUGUR_MAX_WIDTH)
			FAIL(-E2BIG, "a layer width is not in 1..=1024");
		if (n != prev)
			FAIL(-EINVAL, "a layer's inputs do not match the previous layer's outputs");
		if (last && m > AUGUR_MAX_OUTPUTS)
			FAIL(-EINVAL, "the last layer has more than 2 outputs");
		if (act != (last ? 0u : 1u))
			FAIL(-EINVAL, "hidden layers must be ReLU and the last one linear");
		if (e < MIN_WEIGHT_EXP || e > MAX_WEIGHT_EXP)
			FAIL(-ERANGE, "a weight exponent is out of range");
		if (r > MAX_OUT_SHIFT || (last && r != 0))
			FAIL(-ERANGE, "an output shift is out of range");
		if (p[11] != 0)
			FAIL(-EINVAL, "a reserved byte is not 0");
		act_exp += e - (s32)r;
		if (act_exp < -MAX_ACT_EXP || act_exp > MAX_ACT_EXP)
			FAIL(-ERANGE, "an activation exponent is out of range");
		nw = (size_t)m * n;
		/* f32 weights and bias: skipped. */
		if (!take(&c, 4 * nw + 4 * (size_t)m))
			FAIL(-EINVAL, "truncated in a layer's f32 weights");
		wq = take(&c, 2 * nw);
		bq = take(&c, 8 * (size_t)m);
		if (!wq || !bq)
			FAIL(-EINVAL, "truncated in a layer's quantized weights");
		for (i = 0; i < nw; i++) {
			s16 w = (s16)(wq[2 * i] | wq[2 * i + 1] << 8);

			/* An s16 is at most 32767: only -32768 is out. */
			if (w < -W_QMAX)
				FAIL(-ERANGE, "a quantized weight is outside -32767..=32767");
		}
		for (i = 0; i < m; i++) {
			s64 b = (s64)le64(bq + 8 * i);
			s64 lim = k == 0 ? B1_QMAX : B_QMAX;

			if (b < -lim || b > lim)
				FAIL(-ERANGE, "a quantized bias is outside the integer path's bound");
		}
		total += align8(8 * (size_t)m) + align8(2 * nw);
		prev = m;
	}
	/* Training metadata. */
	if ((err = skip_str(&c, MAX_STR)) || (err = skip_str(&c, MAX_STR)))
		FAIL(err, "bad metadata string");
	if (!take(&c, 8))
		FAIL(-EINVAL, "truncated in the metadata");
	if ((err = skip_str(&c, MAX_STR)) || (err = skip_str(&c, MAX_STR)))
		FAIL(err, "bad metadata string");
	p = take(&c, 8);
	if (!p)
		FAIL(-EINVAL, "truncated in the metadata");
	if (le32(p + 4) > MAX_METRICS)
		FAIL(-E2BIG, "more than 64 metrics");
	for (i = le32(p + 4); i > 0; i--) {
		if ((err = skip_str(&c, MAX_METRIC_NAME)))
			FAIL(err, "bad metric name");
		if (!take(&c, 8))
			FAIL(-EINVAL, "truncated in the metrics");
	}
	if (c.left < 4)
		FAIL(-EINVAL, "truncated before the checksum");
	if (c.left > 4)
		FAIL(-EINVAL, "bytes after the checksum");
	/* The fuzz build lets mutated files past it, into the layout. */
	if (crc32_ieee(buf, len - 4) != le32(buf + len - 4) && !AUGUR_FUZZ_NO_CRC)
		FAIL(-EBADMSG, "checksum mismatch");
	*need = total;
	return 0;
}

const char *augur_model_errno_name(int err)
{
	switch (-err) {
	case EINVAL:
		return "EINVAL";
	case EOPNOTSUPP:
		return "EOPNOTSUPP";
	case E2BIG:
		return "E2BIG";
	case ERANGE:
		return "ERANGE";
	case EBADMSG:
		return "EBADMSG";
	default:
		return "?";
	}
}

struct augur_model *augur_model_build(const u8 *buf, size_t len, void *mem)
{
	struct augur_model *m = mem;
	u8 *at = (u8 *)mem + align8(sizeof(*m));
	const u8 *p = buf + 12;
	u32 k, i;

	memset(m, 0, sizeof(*m));
	m->feature_set = buf[10];
	m->n_layers = buf[11];
	m->n_inputs = le32(p);
	m->crc = le32(buf + len - 4);
	p += 8;
	if (le32(p - 4) & 1)
		p += (size_t)8 * m->n_inputs;
	for (k = 0; k < m->n_layers; k++) {
		struct augur_layer *l = &m->layers[k];
		size_t nw;
		s64 *bias = (s64 *)at;
		s16 *w;

		l->inputs = le32(p);
		l->outputs = le32(p + 4);
		l->relu = p[8];
		l->out_shift = p[10];
		nw = (size_t)l->outputs * l->inputs;
		p += 12 + 4 * nw + 4 * (size_t)l->outputs;
		w = (s16 *)(at + align8(8 * (size_t)l->outputs));
		for (i = 0; i < nw; i++)
			w[i] = (s16)(p[2 * i] | p[2 * i + 1] << 8);
		p += 2 * nw;
		for (i = 0; i < l->outputs; i++)
			bias[i] = (s64)le64(p + 8 * i);
		p += 8 * (size_t)l->outputs;
		l->weights = w;
		l->bias = bias;
		at += align8(8 * (size_t)l->outputs) + align8(2 * nw);
	}
	return m;
}
