/* config target: the benchmark program (LOCKED). Only its build flags may change.
 *
 * Reads n and two n x n matrices of doubles (row-major) from argv[1], writes C = A B to argv[2].
 * The loop order (i, k, j) lets a compiler vectorise the inner loop when it is allowed to.
 */
#include <stdio.h>
#include <stdlib.h>

static void matmul(int n, const double *a, const double *b, double *c) {
    for (int i = 0; i < n * n; i++) c[i] = 0.0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < n; k++) {
            double aik = a[i * n + k];
            for (int j = 0; j < n; j++) c[i * n + j] += aik * b[k * n + j];
        }
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: bench IN OUT\n"); return 2; }
    FILE *in = fopen(argv[1], "rb");
    if (!in) { perror(argv[1]); return 1; }
    int n;
    if (fread(&n, sizeof n, 1, in) != 1 || n <= 0 || n > 8192) { fprintf(stderr, "bad n\n"); return 1; }
    size_t sz = (size_t)n * n;
    double *a = malloc(sz * sizeof *a), *b = malloc(sz * sizeof *b), *c = malloc(sz * sizeof *c);
    if (!a || !b || !c) { fprintf(stderr, "out of memory\n"); return 1; }
    if (fread(a, sizeof *a, sz, in) != sz || fread(b, sizeof *b, sz, in) != sz) {
        fprintf(stderr, "short input\n"); return 1;
    }
    fclose(in);
    matmul(n, a, b, c);
    FILE *out = fopen(argv[2], "wb");
    if (!out || fwrite(c, sizeof *c, sz, out) != sz) { perror(argv[2]); return 1; }
    fclose(out);
    free(a); free(b); free(c);
    return 0;
}
