// SPDX-License-Identifier: GPL-2.0 OR MIT
/* Runs every file named on the command line through the fuzz target once
 * (for builds without libFuzzer: CI replays the committed corpus so). */
#include <stdio.h>
#include <stdlib.h>

#include "../augur_model.h"

int LLVMFuzzerTestOneInput(const u8 *data, size_t size);

int main(int argc, char **argv)
{
	static u8 buf[AUGUR_MODEL_MAX_BYTES + 1];
	int i;

	for (i = 1; i < argc; i++) {
		FILE *f = fopen(argv[i], "rb");
		size_t n;

		if (!f) {
			perror(argv[i]);
			return 1;
		}
		n = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		LLVMFuzzerTestOneInput(buf, n);
	}
	printf("replayed %d inputs\n", argc - 1);
	return 0;
}
