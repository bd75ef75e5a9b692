"""The music testbed's judges: the symbolic diversity embedder E over piano rolls (``diversity``),
the text–music alignment scorer (``alignment``), the audio E trained on the corpus rendered by the
synthesiser (``audio_data``, ``audio_cli``) and the symbolic-vs-audio comparison (``compare``)."""
