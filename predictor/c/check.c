// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * The userspace check program of `augur model export-c`: reads encoded
 * input vectors from stdin, one per line (the model's n_inputs integers,
 * separated by spaces), and prints for each the last layer's integer
 * outputs, the score and the decision:
 *
 *     OUT0 [OUT1] SCORE slow|fast
 *
 * exactly as `augur model predict` prints the Rust integer path's. A line
 * that is not a vector of the right length and range is reported with its
 * number, and the program exits 1.
 *
 * `check --bench REPS` (after --model FILE, if given) prints nothing per
 * line: it scores every vector REPS times and says on stderr how many
 * nanoseconds one prediction took (CLOCK_MONOTONIC over the whole loop).
 *
 * `check --encode` (after --model FILE, if given) reads replica histories
 * instead, one per line (augur_features.h's struct augur_history, field by
 * field: pending_pages pending_ios, then latency_us pending_pages_at_issue
 * pending_ios_at_issue size_bytes of the 4 recent reads, len,
 * oldest_pending_us read_max_us, the 4 write latencies, write_len), and
 * prints the model's input vector for each, in the line format it reads.
 *
 * `check --model FILE` scores with a model file read at run time by the
 * parser the kernel module uses (augur_model.c) instead of the model
 * compiled in; a file it refuses is reported (errno name and why) with
 * exit status 2.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "augur_features.h"
#include "augur_model.h"

extern const struct augur_model augur_model;

static struct augur_scratch scratch;

/* Reads and parses a model file; exits 2 with the reason if it is refused. */
static const struct augur_model *load(const char *path)
{
	static u8 buf[AUGUR_MODEL_MAX_BYTES + 1];
	const char *why;
	size_t len, need;
	void *mem;
	FILE *f = fopen(path, "rb");
	int err;

	if (!f) {
		perror(path);
		exit(2);
	}
	len = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	err = augur_model_check(buf, len, &need, &why);
	if (err) {
		fprintf(stderr, "%s: refused (%s): %s\n", path, augur_model_errno_name(err), why);
		exit(2);
	}
	mem = aligned_alloc(8, (need + 7) & ~(size_t)7);
	if (!mem) {
		perror("model memory");
		exit(2);
	}
	return augur_model_build(buf, len, mem);
}

/* --encode: histories in, input vectors out. */
static int encode(const struct augur_model *m)
{
	static char line[4096];
	unsigned long no = 0;

	while (fgets(line, sizeof(line), stdin)) {
		struct augur_history h;
		u32 v[26], *f = v, k, n = 0;
		s32 x[AUGUR_MAX_INPUTS];
		char *p = line, *end;

		no++;
		for (;;) {
			unsigned long t = strtoul(p, &end, 10);

			if (end == p)
				break;
			if (n == 26 || t > 0xFFFFFFFFul) {
				fprintf(stderr, "line %lu: expected 26 u32 fields\n", no);
				return 1;
			}
			v[n++] = (u32)t;
			p = end;
		}
		if (n == 0)
			continue;
		if (n != 26) {
			fprintf(stderr, "line %lu: expected 26 u32 fields\n", no);
			return 1;
		}
		h.pending_pages = *f++;
		h.pending_ios = *f++;
		for (k = 0; k < AUGUR_HISTORY_LEN; k++) {
			h.recent[k].latency_us = *f++;
			h.recent[k].pending_pages_at_issue = *f++;
			h.recent[k].pending_ios_at_issue = *f++;
			h.recent[k].size_bytes = *f++;
		}
		h.len = *f++;
		h.oldest_pending_us = *f++;
		h.read_max_us = *f++;
		for (k = 0; k < AUGUR_WRITE_HISTORY_LEN; k++)
			h.write_recent_us[k] = *f++;
		h.write_len = *f++;
		n = augur_encode(m->feature_set, &h, x);
		if (n == 0) {
			fprintf(stderr, "this model's feature set has no C encoder\n");
			return 1;
		}
		for (k = 0; k < n; k++)
			printf(k + 1 < n ? "%d " : "%d\n", x[k]);
	}
	return 0;
}

int main(int argc, char **argv)
{
	static char line[1 << 16];
	const struct augur_model *m = &augur_model;
	s32 max = m->feature_set == AUGUR_FS_HEIMDALL ? 1024 : 9;
	const struct augur_layer *last = &m->layers[m->n_layers - 1];
	unsigned long no = 0;

	static s32 all[1 << 20];
	unsigned long reps = 0, stored = 0;
	int a = 1;

	if (argc >= a + 2 && strcmp(argv[a], "--model") == 0) {
		m = load(argv[a + 1]);
		max = m->feature_set == AUGUR_FS_HEIMDALL ? 1024 : 9;
		last = &m->layers[m->n_layers - 1];
		a += 2;
	}
	if (argc == a + 1 && strcmp(argv[a], "--encode") == 0)
		return encode(m);
	if (argc >= a + 2 && strcmp(argv[a], "--bench") == 0) {
		reps = strtoul(argv[a + 1], NULL, 10);
		a += 2;
	}
	if (a != argc) {
		fprintf(stderr, "usage: check [--model FILE] [--bench REPS] < vectors\n");
		return 2;
	}
	while (fgets(line, sizeof(line), stdin)) {
		s32 x[AUGUR_MAX_INPUTS];
		s64 out[AUGUR_MAX_OUTPUTS];
		char *p = line, *end;
		u32 n = 0, j;
		s64 score;

		no++;
		if (!strchr(line, '\n') && !feof(stdin)) {
			fprintf(stderr, "line %lu: longer than %zu bytes\n", no,
				sizeof(line) - 1);
			return 1;
		}
		for (;;) {
			long v;

			while (*p == ' ' || *p == '\t')
				p++;
			if (*p == '\n' || *p == '\r' || *p == '\0')
				break;
			v = strtol(p, &end, 10);
			if (end == p || n == m->n_inputs || v < 0 || v > max) {
				fprintf(stderr,
					"line %lu: expected %u integers in 0..=%d\n",
					no, m->n_inputs, max);
				return 1;
			}
			x[n++] = (s32)v;
			p = end;
		}
		if (n == 0)
			continue; /* blank line */
		if (n != m->n_inputs) {
			fprintf(stderr, "line %lu: %u values, the model takes %u\n",
				no, n, m->n_inputs);
			return 1;
		}
		if (reps) {
			if ((stored + 1) * m->n_inputs <= sizeof(all) / sizeof(all[0]))
				memcpy(all + stored++ * m->n_inputs, x, n * sizeof(s32));
			continue;
		}
		score = augur_forward(m, x, out, &scratch);
		for (j = 0; j < last->outputs; j++)
			printf("%lld ", (long long)out[j]);
		printf("%lld %s\n", (long long)score,
		       augur_is_slow(score) ? "slow" : "fast");
	}
	if (reps && stored) {
		struct timespec t0, t1;
		volatile s64 sink = 0;
		s64 out[AUGUR_MAX_OUTPUTS];
		unsigned long r, i;
		double ns;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (r = 0; r < reps; r++)
			for (i = 0; i < stored; i++)
				sink += augur_forward(m, all + i * m->n_inputs, out,
						      &scratch);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
		fprintf(stderr, "%.1f ns per prediction (%lu vectors x %lu)\n",
			ns / ((double)reps * stored), stored, reps);
		(void)sink;
	}
	return 0;
}
