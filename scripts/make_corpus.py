"""Writes a corpus for corpus lookup (`--proposer corpus`): the answer tokens of answer shards
written by `examples/draft_answers.rs` (their prompts cut off), without the hidden states, as one
small safetensors file (`tokens`, int32; `offsets`, int64: where each answer starts, then the
end), which `CorpusIndex::load` reads.

    .venv/bin/python scripts/make_corpus.py 'target/draft-data/train-answers-*' \
        assets/drafts/smollm2/corpus.safetensors
"""

import glob
import sys

import torch
from safetensors.torch import load_file, save_file


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    paths = sorted(glob.glob(sys.argv[1]))
    if not paths:
        sys.exit(f"make_corpus: no shards match {sys.argv[1]}")
    answers = []
    for p in paths:
        d = load_file(p)
        off, pl = d["offsets"].tolist(), d["prompt_lens"].tolist()
        for i in range(len(off) - 1):
            answers.append(d["tokens"][off[i] + pl[i]:off[i + 1]])
    offsets = [0]
    for a in answers:
        offsets.append(offsets[-1] + len(a))
    tokens = torch.cat(answers).to(torch.int32)
    save_file({"tokens": tokens, "offsets": torch.tensor(offsets, dtype=torch.int64)}, sys.argv[2],
              metadata={"source": ", ".join(p.split("/")[-1] for p in paths)})
    print(f"make_corpus: {len(answers)} answers, {len(tokens)} tokens from {len(paths)} shards "
          f"-> {sys.argv[2]}")


if __name__ == "__main__":
    main()
