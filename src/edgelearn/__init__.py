"""edgelearn"""
