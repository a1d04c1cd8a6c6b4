"""Every jaxlm default, each with the reason it is what it is.

This is the default run: a small Llama-style model trained on the shipped Shakespeare corpus with a
SentencePiece vocabulary learnt on first use. It finishes in a few minutes on a 2-core CPU. Presets
(`gpt2_124m.py`, `llama_1b.py`, `shakespeare_char.py`) start from here and change only what differs.
Override any field from the command line: `--config.model.num_layers=2`.
"""

from ml_collections import ConfigDict

# XLA's GPU flags from the JAX/MaxText GPU performance guides, set by the GPU presets: overlap
# collectives with compute, and cuBLAS rather than Triton for the matmuls.
GPU_XLA_FLAGS = ('--xla_gpu_enable_latency_hiding_scheduler=true '
                 '--xla_gpu_enable_triton_gemm=false')


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.seed = 0  # One seed drives init, data order and dropout; fold_in(seed, step) per step.
  c.workdir = 'runs/base'  # Checkpoints, metrics and the data prepared from a source live here.
  c.init_from = ''  # Trained weights that start the run (fresh optimizer, step 0): a Hugging Face
  #                   model directory, or a jaxlm workdir (its newest checkpoint; one trained here
  #                   or made by jaxlm.convert import-hf). Its architecture replaces the model fields
  #                   except dtype, remat, scan_unroll, attention, dropout, init_std, max_seq_len and
  #                   vocab_multiple; the run's tokenizer must be the one it was trained with.
  #                   Ignored once the workdir has a checkpoint (resume).
  c.xla_flags = ''  # Added to XLA_FLAGS before JAX starts (the GPU presets set tuned ones).
  c.cpu_devices = 0  # On a CPU host: JAX devices to split it into, each single-threaded (0: one per
  #                    core that the batch divides over). Data parallelism over cores beats
  #                    intra-op threads for small models.

  c.model = ConfigDict()
  m = c.model
  m.kind = 'transformer'  # 'transformer' (every field below), or the LSTM case study's 'lstm'
  #                         (left to right), 'bilstm' (a bidirectional encoder, for mlm) or
  #                         'lstm_seq2seq' (encoder -> context -> decoder, for span or prefix):
  #                         vocabulary, width, layers, context, dropout, init, tying, dtype.
  m.vocab_size = 0  # 0: the tokenizer's vocabulary, rounded up to vocab_multiple.
  m.vocab_multiple = 64  # A padded vocabulary keeps the head matmul aligned (nanoGPT's 50304).
  m.num_layers = 4  # Depth; the stack is scanned, so compile time does not grow with it.
  m.embed_dim = 192  # D, the residual width.
  m.num_heads = 6  # H query heads.
  m.num_kv_heads = 2  # K key/value heads; K < H is grouped-query attention (0 means K = H).
  m.head_dim = 0  # E; 0 means D // H.
  m.mlp_dim = 0  # F; 0: 4*D for GELU, the Llama rule (2/3 * 4D, to a multiple of 64) for SwiGLU.
  m.max_seq_len = 128  # L, the context; windows of the corpus are this long.
  m.norm = 'rmsnorm'  # 'rmsnorm' (Llama) or 'layernorm' (GPT-2).
  m.position = 'rope'  # 'rope' (Llama) or 'learned' absolute positions (GPT-2).
  m.mlp = 'swiglu'  # 'swiglu' (Llama) or 'gelu' (GPT-2).
  m.use_bias = False  # Biases in dense layers and norms (GPT-2 has them; Llama does not).
  m.tie_embeddings = False  # Share the input embedding with the output head (GPT-2 does).
  m.norm_eps = 1e-5  # Epsilon of LayerNorm / RMSNorm.
  m.rope_theta = 10000.0  # RoPE base wavelength (Llama 2 value).
  m.rope_scaling = ''  # '' (none) or 'llama3': Llama 3.1's stretch of the low RoPE frequencies.
  m.rope_scaling_factor = 8.0  # llama3: wavelengths above rope_original_max_len / low_freq_factor
  m.rope_low_freq_factor = 1.0  # are divided by the factor, those below original / high_freq_factor
  m.rope_high_freq_factor = 4.0  # are kept, and those in between blended (as transformers does).
  m.rope_original_max_len = 8192  # llama3: the context the model was first trained at.
  m.qkv_bias = False  # Biases on the query/key/value projection alone (Qwen2), whatever use_bias is.
  m.dropout = 0.0  # Pretraining on plenty of data needs none; small corpora may want 0.1-0.2.
  m.init_std = 0.02  # Normal init of weights; output projections are scaled by 1/sqrt(2 * layers).
  m.parametrization = 'standard'  # or 'mup' (Tensor Programs V): hidden matrices start at
  #                                 init_std / sqrt(m) and learn at lr / m (Muon: / sqrt(m)),
  #                                 attention scores / E, the head reads h / m, for
  #                                 m = embed_dim / base_width: a rate tuned at the base width
  #                                 carries over to wider models (the head count held fixed).
  m.base_width = 0  # mup: the embed_dim its hyperparameters were tuned at.
  m.dtype = 'float32'  # Compute dtype: 'float32', 'bfloat16' or 'float16'; parameters stay float32.
  m.remat = 'none'  # Activation recomputation per layer: 'none', 'dots' (save matmuls),
  #                   'dots_attention' (and the fused attention kernel's residuals) or 'full'.
  m.scan_unroll = 0  # Layers per scan iteration (0: all). Unrolling speeds up small models (no
  #                    per-layer slicing of stacked buffers); deep presets use 1 to compile fast.
  m.causal = True  # Each token sees only earlier ones (a decoder). False: bidirectional, an encoder
  #                 for train.objective='mlm' (attention still stays within a packed document).
  m.attention = 'auto'  # Kernel: 'auto' (splash on TPU, cuDNN on GPU where they apply, else xla),
  #                       'xla' (any device), 'cudnn' (GPU flash attention), 'splash' (TPU).
  #                       Calls with an explicit mask (decoding, prefix LM) always use 'xla'.
  m.decoder_attention = ''  # model.kind='lstm_seq2seq': '' (the context vector alone) or 'luong'
  #                           (Luong's global attention over the encoder's outputs).

  c.data = ConfigDict()
  d = c.data
  d.corpus = ''  # '' is the shipped tinyshakespeare; a prepared dataset directory (jaxlm.prepare);
  #                or a source that training prepares into <workdir>/data on first use: UTF-8
  #                text files (a file, directory or glob; each file a document), JSONL (.jsonl,
  #                .jsonl.gz), 'seqio:<task>' or 'tfds:<name>' (the seqio extra).
  d.mixture = ''  # Prepared datasets mixed by weight, 'web:0.7,books:0.3' (directories); replaces
  #                 data.corpus. Rows are interleaved in these proportions, deterministically. In
  #                 stages: 'web:0.9,code:0.1@0; web:0.6,code:0.4@8000' (weights from each step
  #                 on; 0 leaves a dataset out of a stage; validation weighs by the last stage).
  d.packing = 'concat'  # 'concat': windows over the documents joined by end-of-sequence (as in
  #                       nanoGPT); 'pack': whole documents packed into rows, attention within each.
  d.max_docs_per_row = 0  # With 'pack': at most this many documents (pieces) a row; 0: no limit.
  d.stride = 0  # With 'concat': start of consecutive windows; 0: L (no overlap), 1: every offset.
  d.workers = 0  # Grain worker processes reading batches (0: a thread of the training process).
  #                The batches are the same with any number; 2+ pay off for large batches.
  d.text_field = 'text'  # The JSONL field (SeqIO or TFDS feature) that holds a document's text.
  d.seqio_module = ''  # Module to import that registers the SeqIO task, e.g. 'my_project.tasks'.
  d.tfds_data_dir = ''  # Where a 'tfds:' dataset was built ('' is TFDS's default); no download.
  # How a source is prepared (a prepared dataset brings its own tokenizer and split):
  d.tokenizer = 'sentencepiece'  # 'sentencepiece', 'char' (nanoGPT's), 'byte' or 'huggingface'.
  d.tokenizer_path = ''  # A SentencePiece .model ('' trains one on the corpus), or for huggingface
  #                        a tokenizer.json or a Hugging Face model directory holding one.
  d.tokenizer_vocab_size = 1024  # Vocabulary learnt when training SentencePiece on the corpus.
  d.val_fraction = 0.1  # Held out for validation, as in nanoGPT (10%).
  d.val_split = 'tail'  # 'tail': the last val_fraction of each document's tokens (for one long
  #                       text, nanoGPT's split); 'documents': whole documents, chosen by a hash.

  c.train = ConfigDict()
  t = c.train
  t.objective = 'causal'  # 'causal': predict each next token. 'mlm': masked LM (BERT) on a
  #                         bidirectional model (model.causal=False, or 'bilstm'), with the mlm.*
  #                         settings. 'span': T5's span corruption as a prefix LM (or into an
  #                         'lstm_seq2seq'), with the span.* settings. 'prefix': each window cut
  #                         at random, its prefix read whole, the rest predicted (T5's prefix LM).
  #                         'fim': causal LM with fill-in-the-middle rows (the fim.* settings).
  t.steps = 500  # Optimizer steps; the default run takes a few minutes on a 2-core CPU.
  t.batch_size = 16  # B, global sequences per step, split over the dcn, data and fsdp mesh axes.
  t.grad_accum = 1  # Micro-batches per step; B must divide by it. Same update as one big batch.
  t.z_loss = 0.0  # Weight of log(Z)^2, which keeps logits from drifting (PaLM uses 1e-4).
  t.loss_chunk = 0  # Positions per chunk of the loss: only [B, chunk, V] float32 logits exist at
  #                   once (0: all); saves memory for large vocabularies. Must divide max_seq_len.
  t.loss_grad = 'blockwise'  # 'blockwise': the head and loss compute their own gradient chunk by
  #                   chunk in the forward pass (one head matmul fewer, no float32 logits kept);
  #                   'autodiff': jax.grad of the chunked loss, each chunk rematerialised.
  t.profile_start = 0  # Step at which to start a jax.profiler trace into <workdir>/profile (0: no).
  t.profile_steps = 5  # Steps the trace covers.
  t.log_every = 10  # Steps between metric lines; the only host syncs in the loop happen here.
  t.eval_every = 100  # Steps between validation passes (and at the end).
  t.eval_batches = 0  # Validation batches (of batch_size rows) per pass; 0: the whole split.
  t.sample_tokens = 200  # Tokens generated for each sample (at most the context); 0 disables.
  t.eval_samples = 2  # Samples generated and logged at each validation pass; one more at the end.
  t.eval_tasks = ''  # lm-eval tasks run on the live parameters (comma-separated; needs the eval
  #                    extra), e.g. 'shakespeare_cloze,shakespeare_last_word' (jaxlm/tasks).
  t.eval_tasks_every = 0  # Steps between them (and at the end); 0: with each validation pass.
  t.eval_tasks_limit = 0.0  # Documents per task (< 1: a fraction); 0: all of them.
  t.eval_tasks_include = ''  # Directories of further task YAML files (comma-separated).
  t.sample_prompt = ''  # Prompt for that sample; '' starts from the first token of the corpus.
  t.on_nonfinite = 'abort'  # A NaN/Inf loss or gradient: 'abort' (naming the step) or 'skip' it.
  t.max_skips = 20  # Skipped updates in a row that abort the run, whatever the policy: float16's
  #                   loss scale halves at each (2^15 reaches 1 in 15), so 20 means no recovery.

  c.mlm = ConfigDict()  # train.objective='mlm': which tokens are hidden, and how.
  c.mlm.ratio_schedule = 'constant'  # The masking ratio over the steps: 'constant' (ratio_start),
  #                                    'linear' or 'cosine' from ratio_start to ratio_end.
  c.mlm.ratio_start = 0.15  # BERT's 15%; Wettig et al. (2023) find 40% better for larger models.
  c.mlm.ratio_end = 0.15  # Where 'linear' and 'cosine' arrive at the last step (e.g. 0.3 -> 0.15).
  c.mlm.mask_fraction = 0.8  # Of the selected tokens, replaced by the [MASK] id (the first id past
  c.mlm.random_fraction = 0.1  # the tokenizer's), by a random ordinary token, or (the rest) kept.
  c.mlm.eval_ratio = 0.15  # Ratio for validation and jaxlm.eval, with a fixed seed: runs compare.
  c.mlm.eval_masking = 'fixed'  # 'fixed': evaluation selects tokens one by one, uniformly, so runs
  #                               masked differently compare; 'train': as training selects them.
  # Where along a document tokens are hidden (x: relative position 0..1 in the document's part of
  # the row); every profile keeps the expected share of hidden tokens at the ratio:
  c.mlm.position_profile = 'uniform'  # 'uniform'; 'linear': weight 1 + position_slope (x - 1/2);
  #                                     'buckets': position_weights over equal parts of a document.
  c.mlm.position_slope = 0.0  # In [-2, 2]: > 0 hides late tokens more, < 0 early ones.
  c.mlm.position_weights = ()  # E.g. (1, 1, 2): the last third hidden twice as often as the others.
  c.mlm.unit = 'token'  # What is hidden whole: 'token'; 'word' (whole-word masking: every piece
  #                       of a word); 'span' (SpanBERT: runs of whole words); 'token_span' (runs
  #                       of tokens). The ratio counts tokens in every unit.
  c.mlm.span_p = 0.2  # Span lengths: geometric with this parameter, restricted to 1..max_span
  c.mlm.max_span = 10  # (SpanBERT's 0.2 and 10: mean 3.8 units).
  c.mlm.token_weighting = 'uniform'  # 'frequency': a token is hidden in proportion to its count in
  #                                    the training data to the power -frequency_alpha (frequent
  #                                    tokens less), counted by jaxlm.prepare.
  c.mlm.frequency_alpha = 0.5

  c.span = ConfigDict()  # train.objective='span' (T5): windows lose spans of tokens to sentinels.
  c.span.noise_density = 0.15  # Fraction of each window's tokens hidden (T5's 15%).
  c.span.mean_span_length = 3.0  # Mean length of a hidden span (T5's 3); one sentinel id each.
  #   The window is as long as T5's random_spans_helper says, so that the corrupted input and the
  #   target together fill model.max_seq_len; sentinel ids are the top ids of the vocabulary.

  c.fim = ConfigDict()  # train.objective='fim' (Bavarian et al. 2022): rows cut into prefix,
  c.fim.rate = 0.5  # middle, suffix and reordered <PRE> prefix <SUF> suffix <MID> middle with this
  #                   probability (their 0.5: infilling learnt at no cost to left-to-right loss).

  c.optim = ConfigDict()
  o = c.optim
  o.name = 'adamw'  # 'adamw'; 'muon': Muon (optax.contrib) on the hidden matmul weights, each
  #                  layer's query, key, value, output and MLP matrices orthogonalised on their
  #                  own, and AdamW on embeddings, head, norms and biases (modded-nanogpt); or
  #                  'schedule_free_adamw' (optax.contrib, with schedule='constant'): validation,
  #                  jaxlm.eval, generation and export use its averaged parameters.
  o.lr = 3e-3  # Peak learning rate; small models tolerate a high one.
  o.schedule = 'cosine'  # 'cosine' (decays to min_lr), 'constant' (after warm-up), or 'wsd':
  #                        warm-up, stable at lr, then decay_shape to min_lr over the last
  #                        decay_fraction of the steps (a run stopped while stable can go on
  #                        with more train.steps, as if they had been set from the start).
  o.decay_fraction = 0.2  # wsd: the share of the steps that decay (20%: Hägele et al. 2024).
  o.decay_shape = '1-sqrt'  # wsd: 'linear', 'cosine' or '1-sqrt' (the best of these there).
  o.warmup_steps = 50  # Linear warm-up from 0, which keeps Adam's first steps stable.
  o.min_lr = 3e-4  # Floor of the cosine, 10% of the peak (Chinchilla).
  o.decay_steps = 0  # Length of warm-up plus decay; 0 means train.steps.
  o.b1 = 0.9  # Adam beta1.
  o.b2 = 0.95  # Adam beta2; 0.95 rather than 0.999 is the LLM norm for stability.
  o.eps = 1e-8  # Adam epsilon.
  o.weight_decay = 0.1  # Decoupled (AdamW) decay on matmul weights.
  o.muon_momentum = 0.95  # muon: Nesterov momentum of the gradients before orthogonalising.
  o.muon_ns_steps = 5  # muon: Newton-Schulz iterations (optax's quintic coefficients).
  o.muon_rms = 0.2  # muon: the RMS each update is scaled to, AdamW's typical one, so that lr,
  #                  the schedule and weight decay carry over from AdamW (Liu et al. 2025).
  o.schedule_free_power = 2.0  # schedule_free_adamw: the average weighs step t by lr_t^power.
  o.decay_embeddings = False  # Norms and biases are never decayed; embeddings only if this is set.
  o.clip_norm = 1.0  # Global gradient-norm clipping; 0 disables.
  o.loss_scale_init = 2.0**15  # Initial dynamic loss scale, used only with float16 compute.
  o.loss_scale_period = 2000  # Finite steps before the float16 loss scale doubles.

  c.mesh = ConfigDict()
  c.mesh.dcn = 1  # Slices (TPU pods joined by the data-center network): data parallel across them.
  c.mesh.data = -1  # Data-parallel replicas; -1 takes the devices the other axes leave.
  c.mesh.fsdp = 1  # Parameter and optimizer-state sharding (ZeRO-3 style) degree.
  c.mesh.tensor = 1  # Tensor (Megatron) parallel degree over heads, MLP width and vocabulary.
  # The one logical-to-mesh rules table: each logical axis maps to a comma-separated list of mesh
  # axes ('' replicates); override per hardware from the command line. Weights and activations
  # name their axes apart (MaxText's activation_* names), so each can be sharded on its own; two
  # axes of one array on the same mesh axis are refused. The reasons:
  c.mesh.rules = ConfigDict(dict(
      # Activations [batch, length, embed] and attention's [batch, length, heads, head_dim]:
      activation_batch='dcn,data,fsdp',  # data parallelism: rows over every non-tensor axis
      activation_length='',  # whole sequences per device (no sequence parallelism)
      activation_embed='',  # the width whole: fsdp already splits these arrays by their rows
      activation_heads='tensor',  # Megatron attention: each tensor shard computes its heads...
      activation_kv_heads='tensor',  # ...with the key/value heads they share
      # Weights:
      embed='fsdp',  # FSDP (ZeRO-3): every matrix split along the model width, gathered per layer
      mlp='tensor',  # Megatron MLP: up-projections split by columns, the down one by rows
      heads='tensor',  # attention projections split by head, as the activations above
      kv_heads='tensor',
      head_dim='',  # heads split whole
      vocab='tensor',  # the embedding table and the output head split by token id
      length='',  # learned position table rows (GPT-2): small, kept whole
      layers='',  # the scanned layer stack: every device holds every layer's shard
  ))

  c.checkpoint = ConfigDict()
  c.checkpoint.every = 250  # Steps between checkpoints (and one at the end).
  c.checkpoint.keep = 3  # Latest checkpoints kept; older ones are deleted...
  c.checkpoint.keep_period = 0  # ...except every keep_period-th step, kept for good (0: none).
  c.checkpoint.async_save = True  # Write in the background; the loop waits only for device-to-host.

  c.distributed = ConfigDict()
  c.distributed.initialize = False  # Call jax.distributed.initialize() (multi-host TPU/GPU/SLURM).
  c.distributed.coordinator_address = ''  # host:port of process 0; '' lets JAX auto-detect it.
  c.distributed.num_processes = 0  # 0 lets JAX auto-detect it.
  c.distributed.process_id = -1  # -1 lets JAX auto-detect it.
  # Under SLURM (srun) jaxlm sets all four from SLURM's variables (jaxlm/cluster.py); elsewhere
  # (TPU VMs, GKE, Open MPI) JAX detects them. Fields set here win.
  c.distributed.coordinator_port = 0  # With a SLURM job's first node; 0: derived from the job id.
  c.distributed.local_device_ids = ''  # e.g. '0,1': the GPUs this process drives; '': detected.
  # Seconds every process waits for the others to join: a cold start of many nodes (image pulls,
  # imports on a shared file system) takes longer than JAX's default of 300.
  c.distributed.timeout = 900
  return c
