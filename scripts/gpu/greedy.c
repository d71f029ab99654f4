// llama.cpp's own greedy decoding over its C API, the reference that scripts/gpu-check compares
// gac against: the prompt in one batch, then one token at a time, argmax of the logits, with the
// context settings a gac llama.cpp member uses (4096 tokens, batches of 512).
//
// usage: greedy MODEL GPU_LAYERS MAX_TOKENS PROMPT   (prints the generated text)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char *text, void *data) {
    (void)level, (void)text, (void)data;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL GPU_LAYERS MAX_TOKENS PROMPT\n", argv[0]);
        return 2;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = atoi(argv[2]);
    mp.split_mode = LLAMA_SPLIT_MODE_NONE;
    mp.main_gpu = 0;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 4096;
    cp.n_batch = 512;
    cp.n_ubatch = 512;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    const char *prompt = argv[4];
    int n = -llama_tokenize(vocab, prompt, strlen(prompt), NULL, 0, true, true);
    llama_token *tokens = malloc(sizeof(llama_token) * n);
    llama_tokenize(vocab, prompt, strlen(prompt), tokens, n, true, true);
    if (llama_decode(ctx, llama_batch_get_one(tokens, n))) {
        fprintf(stderr, "prompt decode failed\n");
        return 1;
    }
    int n_vocab = llama_vocab_n_tokens(vocab);
    for (int i = 0; i < atoi(argv[3]); i++) {
        const float *logits = llama_get_logits_ith(ctx, -1);
        llama_token best = 0;
        for (llama_token t = 1; t < n_vocab; t++) {
            if (logits[t] > logits[best]) best = t;
        }
        if (llama_vocab_is_eog(vocab, best)) break;
        char piece[256];
        int len = llama_token_to_piece(vocab, best, piece, sizeof piece, 0, true);
        fwrite(piece, 1, len > 0 ? len : 0, stdout);
        if (llama_decode(ctx, llama_batch_get_one(&best, 1))) {
            fprintf(stderr, "decode failed\n");
            return 1;
        }
    }
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
