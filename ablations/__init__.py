"""ablations"""
