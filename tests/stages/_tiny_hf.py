"""Tiny random-initialised transformers models saved to a folder, for the HF stage tests.

Everything is built from configs here (no hub): a CLIP BPE tokenizer over a dozen words, and
one-layer vision / text towers, so the stages' real processors and post-processing run in
well under a second per call.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ["a", "photo", "of", "road", "work", "cone", "traffic", "street", "empty", "worker", "barrier",
         "construction", "sign", "an", "orange", "person"]


def clip_tokenizer():
    """A CLIP tokenizer whose vocabulary spells WORDS as whole tokens (others fall back to letters)."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for c in sorted(set("".join(WORDS))):
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for w in WORDS:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            a, b = parts[0], parts[1]
            if (a, b) not in merges:
                merges.append((a, b))
            vocab.setdefault(a + b, len(vocab))
            parts = [a + b] + parts[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16)


def _towers(tok, image_size: int = 32, patch: int = 8):
    text = dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=image_size, patch_size=patch)
    return text, vision


def save_vit_classifier(folder: Path, labels: list[str], seed: int = 0) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, id2label=dict(enumerate(labels)),
                    label2id={lab: i for i, lab in enumerate(labels)})
    ViTForImageClassification(cfg).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def save_clip(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tok = clip_tokenizer()
    text, vision = _towers(tok)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(folder)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=proc, tokenizer=tok).save_pretrained(folder)
    return folder


def save_owlv2(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    torch.manual_seed(seed)
    tok = clip_tokenizer()
    text, vision = _towers(tok)
    Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(folder)
    return folder


def save_depth_anything(folder: Path, seed: int = 0) -> Path:
    """A two-layer Depth Anything whose head biases are positive, so its disparity is not all zero
    (a freshly initialised head ends in a ReLU that often outputs exactly 0 everywhere)."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            patch_size=14, image_size=56, out_features=["stage1", "stage2"], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, reassemble_factors=[2, 1],
                              neck_hidden_sizes=[8, 16], fusion_hidden_size=8, head_hidden_size=4,
                              depth_estimation_type="relative")
    model = DepthAnythingForDepthEstimation(cfg)
    with torch.no_grad():
        for name, param in model.head.named_parameters():
            if name.endswith("bias"):
                param.fill_(0.5)
    model.save_pretrained(folder)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14).save_pretrained(folder)
    return folder


def save_sam(folder: Path, seed: int = 0) -> Path:
    """A one-layer SAM (ViT image encoder at 64 px, 16 px patches) and its processor, padded to 64 x 64."""
    import torch
    from transformers import (SamConfig, SamImageProcessor, SamMaskDecoderConfig, SamModel, SamProcessor,
                              SamPromptEncoderConfig, SamVisionConfig)

    torch.manual_seed(seed)
    vision = SamVisionConfig(hidden_size=16, output_channels=16, num_hidden_layers=1, num_attention_heads=2,
                             image_size=64, patch_size=16, mlp_dim=32, global_attn_indexes=[0], num_pos_feats=8)
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32,
                                   iou_head_hidden_dim=16)
    SamModel(SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                       mask_decoder_config=decoder.to_dict())).save_pretrained(folder)
    SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16})).save_pretrained(folder)
    return folder


def save_dfine(folder: Path, labels: tuple[str, ...] = ("traffic cone", "person", "truck"), seed: int = 0) -> Path:
    """A two-decoder-layer D-FINE over a four-stage HGNetV2 of 8-64 channels (about 0.3 MB), 64 px input."""
    import torch
    from transformers import DFineConfig, DFineForObjectDetection, HGNetV2Config, RTDetrImageProcessor

    backbone = HGNetV2Config(embedding_size=8, hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1],
                             stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 32, 64],
                             stage_mid_channels=[8, 8, 16, 16], stage_out_channels=[16, 32, 64, 64],
                             stage_num_blocks=[1, 1, 1, 1], stage_numb_of_layers=[1, 1, 1, 1],
                             out_indices=[2, 3, 4], out_features=["stage2", "stage3", "stage4"])
    cfg = DFineConfig(backbone_config=backbone, encoder_in_channels=[32, 64, 64], encoder_hidden_dim=16,
                      encoder_ffn_dim=32, encoder_attention_heads=2, d_model=16, decoder_in_channels=[16, 16, 16],
                      decoder_ffn_dim=32, decoder_layers=2, decoder_attention_heads=2, num_queries=20,
                      num_denoising=0, lqe_hidden_dim=8, decoder_n_points=2, hidden_expansion=0.5, depth_mult=0.34,
                      num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={lab: i for i, lab in enumerate(labels)})
    torch.manual_seed(seed)
    DFineForObjectDetection(cfg).save_pretrained(folder)
    RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder
