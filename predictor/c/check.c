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
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "augur_predict.h"

extern const struct augur_model augur_model;

static struct augur_scratch scratch;

int main(void)
{
	static char line[1 << 16];
	const struct augur_model *m = &augur_model;
	s32 max = m->feature_set == AUGUR_FS_HEIMDALL ? 1024 : 9;
	const struct augur_layer *last = &m->layers[m->n_layers - 1];
	unsigned long no = 0;

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
		score = augur_forward(m, x, out, &scratch);
		for (j = 0; j < last->outputs; j++)
			printf("%lld ", (long long)out[j]);
		printf("%lld %s\n", (long long)score,
		       augur_is_slow(score) ? "slow" : "fast");
	}
	return 0;
}
