"""Research instruments over a NoteEncoder and its vectors: plain functions returning arrays and frames.

    saliency     S_v / S_t / S_o per layer (how visual neglect is measured), S_v split into the visual
                 tokens (S_visual) and the mICL slot with its instruction (S_slot)
    attention    the embedding token's attention on the image tokens, pushed back to the patch grid
    gate         the late-fusion gate's LLM share per note
    projection   cached UMAP maps, and two maps aligned note by note
    compare      neighbour-list overlap, Jaccard, rank-biased overlap, what entered and left
    modality     the same query with the image only, the text only, and both

No UI code lives here; the app and notebooks call these names.
"""
