#!/usr/bin/env python3
"""Summarise a sales export: revenue per region and the best-selling products."""

import csv
import sys
from collections import Counter, defaultdict


def summarise(path):
    revenue = defaultdict(float)
    units = Counter()
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            amount = float(row["quantity"]) * float(row["unit_price"])
            revenue[row["region"]] += amount
            units[row["product"]] += int(row["quantity"])
    return revenue, units


def main():
    revenue, units = summarise(sys.argv[1])
    print("Revenue by region")
    for region, total in sorted(revenue.items(), key=lambda kv: -kv[1]):
        print(f"  {region:<12} {total:>12,.2f}")
    print("Top five products by units sold")
    for product, count in units.most_common(5):
        print(f"  {product:<20} {count:>8}")


if __name__ == "__main__":
    main()
