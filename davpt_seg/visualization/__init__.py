from .prompt_attention import (BlockAttention, attention_rows, capture_block_inputs,
                               draw_prompt_attention, figure_pixel_size,
                               prompt_attention_maps, prompt_class_names)

__all__ = ['BlockAttention', 'attention_rows', 'capture_block_inputs', 'draw_prompt_attention',
           'figure_pixel_size', 'prompt_attention_maps', 'prompt_class_names']
