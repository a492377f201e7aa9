"""Wire formats: v2 datatypes, the JSON tensor codec and the binary tensor extension."""
