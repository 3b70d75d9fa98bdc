# Sourced by run_h200_mix.sh and run_h200x2.sh: the model file and default size of MODEL=gpt or
# MODEL=llama, so both scripts run the same shapes. Sets MODEL_FILE and DEFAULT_ARGS (KEY=VALUE
# words), and TINY_ARGS for the CPU dry run; returns 1 for an unknown kind.
model_setup() {  # $1 = gpt | llama
  case "$1" in
    # GPT: 20 blocks of hidden 3072 (24 heads of 128), 2.57 B parameters — between GPT-3 2.7B
    # and 6.7B (Brown et al. 2020, Table 2.1), a shape not profiled before.
    gpt) MODEL_FILE=experiments/models/gpt.py
         DEFAULT_ARGS="size=2.7b layers=20 hidden=3072 heads=24"
         TINY_ARGS="size=tiny hidden=64 heads=4 vocab=256 positions=64" ;;
    # Llama at the Llama 3.2 1B shape (Meta's model card: 16 layers, hidden 2048, 32 heads,
    # 8 key/value heads, SwiGLU 8192, vocabulary 128256), untied head: 1.50 B parameters.
    llama) MODEL_FILE=experiments/models/llama.py
           DEFAULT_ARGS="size=7b layers=16 hidden=2048 heads=32 kv_heads=8 ffn=8192 vocab=128256"
           TINY_ARGS="size=tiny hidden=64 heads=4 kv_heads=2 ffn=96 vocab=256" ;;
    *) return 1 ;;
  esac
}
