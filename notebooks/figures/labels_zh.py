"""The figures' labels in Simplified Chinese, for the zh-CN edition of the course.

`ZH` maps each label as draw.py writes it in English to the label of the Chinese figure. A label
computed from numbers is a template, its fields filled in after the translation (`Canvas.tr`).
Only prose is translated: names set as `code`, math, numbers, shapes and equation numbers stay as
they are, and the terms are those of zh-CN/GLOSSARY.md. A label without English prose (a formula,
a shape) needs no entry; a label with prose and no entry stops the build, so the Chinese figures
cannot fall behind the English ones.
"""

from __future__ import annotations

import re

ZH = {
    # soft_lookup
    "Soft look-up: one query q against keys k_{j} and values v_{j}   (eq. 3.2)":
        "软查找：一个查询 q 对照键 k_{j} 与值 v_{j}   (式 3.2)",
    "query": "查询",
    "keys": "键",
    "scores": "分数",
    "weights": "权重",
    "values": "值",
    "output": "输出",
    "line width ∝ α_{j}": "线宽 ∝ α_{j}",
    "Hard look-up (3.1): all the weight on the key equal to q.  Soft: every key gets some, "
    "smoothly.": "硬查找 (3.1)：权重全部落在与 q 相等的键上。软查找：每个键都平滑地分到一些。",
    # causal_mask
    "The causal mask: query i may read keys j ≤ i   (eqs. 3.4, 3.5)":
        "因果掩码：查询 i 只能读取 j ≤ i 的键   (式 3.4, 3.5)",
    "scores, every pair (i, j)": "分数，每一对 (i, j)",
    "M_{ij} = −∞ where j > i": "j > i 处 M_{ij} = −∞",
    "each row sums to 1": "每行之和为 1",
    "key j →": "键 j →",
    "query i ↓": "查询 i ↓",
    "M_{ij} = 0 if j ≤ i and −∞ if j > i   (3.5):  exp(−∞) = 0, so no weight reaches the "
    "future.": "j ≤ i 时 M_{ij} = 0，j > i 时为 −∞   (3.5)：exp(−∞) = 0，权重到不了未来。",
    "In code: `causal_mask(T, T)` is True where j ≤ i (may attend); `is_causal=True` masks the "
    "same.": "代码中：`causal_mask(T, T)` 在 j ≤ i（可以关注）处为 True；"
             "`is_causal=True` 的掩码相同。",
    # heads_split_merge
    "Multi-head attention: split into heads, attend, merge   (eqs. 4.1-4.4)":
        "多头注意力：拆成多个头，各自做注意力，再合并   (式 4.1-4.4)",
    "attend": "注意力",
    "token vectors": "词元向量",
    "`qkv_proj`: one (C, 3C) map   (4.4)": "`qkv_proj`：一个 (C, 3C) 映射   (4.4)",
    "`.split(n_embd, dim=2)`: 3 × (B, T, C)": "`.split(n_embd, dim=2)`：3 × (B, T, C)",
    "`split_heads`: view (B, T, h, d),": "`split_heads`：先变形为 (B, T, h, d)，",
    "then transpose(1, 2) → (B, h, T, d)": "再 transpose(1, 2) → (B, h, T, d)",
    "each head on its own, in parallel   (4.2):": "每个头各自独立、并行地计算   (4.2)：",
    "head_{1} … head_{h}: (B, h, T, d)": "head_{1} … head_{h}：(B, h, T, d)",
    "`merge_heads`: transpose back, then view": "`merge_heads`：转置回来，再变形",
    "`out_proj`: W^{O}, a (C, C) map   (4.3)": "`out_proj`：W^{O}，一个 (C, C) 映射   (4.3)",
    "Drawn with h = {h}; GPT-2 small has n_embd = {n_embd}, n_head = {n_head}, head_dim = "
    "{head_dim} (GPTConfig defaults).": "图中 h = {h}；GPT-2 small 的 n_embd = {n_embd}，"
    "n_head = {n_head}，head_dim = {head_dim}（GPTConfig 的默认值）。",
    # sinusoids_rope
    "Sinusoidal encoding   (5.2)": "正弦位置编码   (5.2)",
    "each pair of features is a clock hand": "每一对特征是一根时钟指针",
    "pair i = {i}": "特征对 i = {i}",
    "ω_{i} = base^{−2i/d}: fast hands tell neighbours apart,":
        "ω_{i} = base^{−2i/d}：快指针区分相邻的位置，",
    "slow hands tell far positions apart.": "慢指针区分相距很远的位置。",
    "p → p + k turns pair i by k ω_{i}, whatever p:":
        "p → p + k 使特征对 i 转过 k ω_{i}，与 p 无关：",
    "drawn with d = {d}, base = {base:g}; minigpt: base = {default:g}":
        "图中 d = {d}，base = {base:g}；minigpt 中 base = {default:g}",
    "Rotary embedding, RoPE   (5.5, 5.6)": "旋转位置编码 RoPE   (5.5, 5.6)",
    "rotate q and k by angles set by their positions": "按各自位置决定的角度旋转 q 和 k",
    "shift both by 3: the angle between R_{p}q": "两者同时平移 3：R_{p}q 与 R_{s}k",
    "and R_{s}k, so the score, does not change": "之间的夹角不变，分数也就不变",
    "pair i at position p turns by p θ_{i},  θ_{i} = base^{−2i/d}":
        "位置 p 上的特征对 i 转过 p θ_{i}，θ_{i} = base^{−2i/d}",
    "`RotaryEmbedding` rotates q and k, never v": "`RotaryEmbedding` 旋转 q 和 k，从不旋转 v",
    "dashed: q and k before the rotation": "虚线：旋转之前的 q 和 k",
    # block_pre_post_ln
    "post-LN (Vaswani et al., 2017)": "post-LN (Vaswani 等, 2017)",
    "residual stream": "残差流",
    "The stream is a pure sum, an identity path y → x;":
        "残差流是单纯的求和，是 y → x 的恒等路径；",
    "`ln_f` normalises it once, after the last block.": "`ln_f` 在最后一个块之后对它归一化一次。",
    "The stream itself is normalised: every path": "残差流本身被归一化：从 y 到 x 的",
    "from y to x crosses LN_{1} and LN_{2}.": "每条路径都要经过 LN_{1} 和 LN_{2}。",
    # gpt_stack
    "The whole GPT: ids in, one score per vocabulary entry out   (eqs. 7.1-7.3)":
        "完整的 GPT：输入 id，为词表中的每一项输出一个分数   (式 7.1-7.3)",
    "rows of E, (V, C)": "E 的行，(V, C)",
    "Block": "Transformer 块",
    "row t scores every token as the next one, t + 1": "第 t 行给每个词元打分，预测第 t + 1 个词元",
    "tied": "绑定",
    "no P when `pos_encoding=\"rope\"`": "`pos_encoding=\"rope\"` 时没有 P",
    "(7.2), each with its own weights": "(7.2)，每个块有自己的权重",
    "`lm_head.weight` is `token_emb.weight`": "`lm_head.weight` 就是 `token_emb.weight`",
    "GPT-2 small (GPTConfig defaults): V = `vocab_size` = {vocab_size}, C = `n_embd` = {n_embd},":
        "GPT-2 small（GPTConfig 的默认值）：V = `vocab_size` = {vocab_size}，"
        "C = `n_embd` = {n_embd}，",
    "L = `n_layer` = {n_layer}, T ≤ `block_size` = {block_size}.  Drawn: the bytes of \"def f(\" "
    "as ids (V = 256).": "L = `n_layer` = {n_layer}，T ≤ `block_size` = {block_size}。"
    "图中以 \"def f(\" 的字节为 id（V = 256）。",
    # training_loop
    "The training loop: one optimiser step, repeated   (eqs. 8.1-8.4, 8.7)":
        "训练循环：优化器的一步，反复执行   (式 8.1-8.4, 8.7)",
    "× `grad_accum_steps` micro-batches: their gradients add up (8.7)":
        "× `grad_accum_steps` 个微批量：梯度累积起来 (8.7)",
    "batch x, y": "批量 x, y",
    "(B, T); y = x shifted by 1": "(B, T)；y 为 x 错开 1 位",
    "forward": "前向传播",
    "loss ℒ(θ)   (8.1)": "损失 ℒ(θ)   (8.1)",
    "backward": "反向传播",
    "clip   (8.4)": "梯度裁剪   (8.4)",
    "AdamW step   (8.2)": "AdamW 更新   (8.2)",
    "next step": "下一步",
    "every `eval_interval` steps": "每 `eval_interval` 步",
    "`evaluate()`: train, val loss": "`evaluate()`：训练集、验证集损失",
    "`save()`: ckpt.pt, every `checkpoint_interval`": "`save()`：ckpt.pt，每 `checkpoint_interval`",
    "a checkpoint holds the model, AdamW's m and v,": "检查点保存模型、AdamW 的 m 和 v、",
    "the step, the data position and the RNG states:": "步数、数据位置和随机数生成器的状态：",
    "a resumed run continues exactly": "恢复后的训练分毫不差地继续",
    "warm-up, then cosine   (8.3)": "先预热，再余弦衰减   (8.3)",
    "`learning_rate_at(step, config)`: W = `warmup_iters`, S = `lr_decay_iters`; drawn for "
    "TrainConfig's defaults": "`learning_rate_at(step, config)`：W = `warmup_iters`，"
    "S = `lr_decay_iters`；按 TrainConfig 的默认值绘制",
    # kv_cache
    "The KV cache: per step, q, k, v of the new token only   (eq. 9.8)":
        "KV 缓存：每一步只计算新词元的 q、k、v   (式 9.8)",
    "tokens so far": "已有的词元",
    "K cache": "K 缓存",
    "V cache": "V 缓存",
    "step t = {t}": "时间步 t = {t}",
    "new column: k_{t}": "新的一列：k_{t}",
    "new column: v_{t}": "新的一列：v_{t}",
    "softmax over j ≤ t": "对 j ≤ t 做 softmax",
    "Only token t goes through `qkv_proj`; `KVCache.append(k, v)` stores its key and value.":
        "只有词元 t 经过 `qkv_proj`；`KVCache.append(k, v)` 存下它的键和值。",
    "The columns of tokens < t are reused as they are: the causal mask means x_{t} cannot "
    "change them.": "词元 < t 的列原样复用：有因果掩码，x_{t} 改变不了它们。",
    "Per layer `k`, `v`: (B, n_head, t, head_dim); dashed: storage for `block_size` "
    "positions.": "每层的 `k`、`v`：(B, n_head, t, head_dim)；虚线：为 `block_size` 个位置"
    "预留的存储。",
    "Memory: 2 · L · T · C numbers per sequence   (9.10).  No mask is needed for a single "
    "new query.": "内存：每条序列 2 · L · T · C 个数   (9.10)。只有一个新查询时不需要掩码。",
    # lora
    "LoRA: a frozen W plus a trainable low-rank update   (eqs. 10.3-10.5)":
        "LoRA：冻结的 W 加上可训练的低秩更新   (式 10.3-10.5)",
    "d_{out} × d_{in}, frozen": "d_{out} × d_{in}，冻结",
    "pretrained": "预训练",
    "A = `lora_A`:  r × d_{in},  random": "A = `lora_A`：r × d_{in}，随机初始化",
    "r numbers": "r 个数",
    "d_{out} × r,  starts at 0": "d_{out} × r，初始为 0",
    "frozen": "冻结",
    "trainable": "可训练",
    "Trains r (d_{in} + d_{out}) numbers instead of d_{in} d_{out}   (10.4);  merged after "
    "training: W' = W + (α/r) B A   (10.5)": "只训练 r (d_{in} + d_{out}) 个数，而不是 "
    "d_{in} d_{out} 个   (10.4)；训练后合并：W' = W + (α/r) B A   (10.5)",
    "`LoRALinear` defaults: r = `rank` = {rank}, α = `alpha` = {alpha:g}; targets {targets}.  "
    "B = 0 at the start: h = Wx.": "`LoRALinear` 的默认值：r = `rank` = {rank}，"
    "α = `alpha` = {alpha:g}；作用于 {targets}。开始时 B = 0：h = Wx。",
}

# Kept in the Chinese labels as they are: names (GPT-2 small, the pre-LN and post-LN variants,
# Transformer, a cited author, a file) and the words of formulas and Python (softmax, idx, True).
KEPT_PHRASES = ("GPT-2 small", "pre-LN", "post-LN", "Transformer", "Vaswani", "ckpt.pt", "minigpt")
KEPT_WORDS = frozenset({"softmax", "logits", "exp", "sin", "cos", "min", "max", "base", "idx",
                        "True"})

CODE_SPAN = re.compile(r"`[^`]*`")
QUOTED = re.compile(r'"[^"]*"')
CALLED = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z][A-Za-z0-9_]*(?=\(|_\{|\^\{)")  # exp(, head_{i}
SCRIPTS = re.compile(r"[_^]\{[^}]*\}")
WORD = re.compile(r"(?<![A-Za-z0-9_.])[A-Za-z][A-Za-z0-9_]*")


def english_prose(label: str) -> list[str]:
    """The English prose words of a label: words of 3+ letters, lower-case or capitalised, outside
    `code`, "string literals", function names and symbols of the formulas and KEPT names.

    Abbreviations and products of symbols (MHA, AdamW, BAx) and identifiers (n_embd) are not prose.
    """
    text = CODE_SPAN.sub(" ", label)
    text = QUOTED.sub(" ", text)
    for phrase in KEPT_PHRASES:
        text = text.replace(phrase, " ")
    text = SCRIPTS.sub(" ", CALLED.sub(" ", text))
    return [word for word in WORD.findall(text)
            if re.fullmatch(r"[A-Z]?[a-z]+", word) and len(word) >= 3 and word not in KEPT_WORDS]


def translate(label: str) -> str:
    """The Chinese label for an English one; a label that has prose but no entry is an error."""
    if label in ZH:
        return ZH[label]
    if english_prose(label):
        raise KeyError(f"no Chinese label for {label!r}: add it to ZH in "
                       "notebooks/figures/labels_zh.py")
    return label
