"""Data files of the country lookup (collector/geo_data.py): the formats BEACON_GEO_DB takes,
and how ranges that nest or overlap are read."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from collector.geo import CountryTable, load_countries
from collector.geo_data import data_files


def table_of(tmp_path: Path, name: str, text: str) -> CountryTable:
    path = tmp_path / name
    path.write_text(text)
    return CountryTable.from_files([path])


def test_a_file_of_addresses_with_both_families_as_db_ip_writes_it(tmp_path: Path) -> None:
    table = table_of(
        tmp_path,
        "dbip-country-lite.csv",
        "1.0.0.0,1.0.0.255,AU\n1.0.1.0,1.0.3.255,CN\n"
        "81.2.64.0,81.2.127.255,GB\n"
        "2001:4860::,2001:4860:ffff:ffff:ffff:ffff:ffff:ffff,US\n"
        "2a00:1450::,2a00:1450:ffff:ffff:ffff:ffff:ffff:ffff,ZZ\n",
    )
    assert [table.country(ip) for ip in ("1.0.0.255", "1.0.1.0", "81.2.69.142", "1.0.4.0")] == [
        "AU", "CN", "GB", ""
    ]  # fmt: skip
    assert table.country("2001:4860:4860::8888") == "US"
    assert table.country("2a00:1450::1") == ""  # ZZ: not known


def test_numbers_in_a_file_named_ipv6_are_ipv6(tmp_path: Path) -> None:
    start = int.from_bytes(bytes.fromhex("20014860" + "00" * 12), "big")
    end = start + 2**96 - 1
    table = table_of(tmp_path, "mine-ipv6-num.csv", f"{start},{end},US\n")
    assert table.country("2001:4860:4860::8888") == "US"
    assert table.country("8.8.8.8") == ""


def test_quotes_a_header_crlf_and_bad_lines_are_taken_or_counted(tmp_path: Path) -> None:
    table = table_of(
        tmp_path,
        "countries.csv",
        'ip_start,ip_end,country\r\n"8.8.8.0","8.8.8.255","us"\r\nnot a line\r\n'
        "9.9.9.0,9.9.9.255,USA\r\n9.9.9.255,9.9.9.0,FR\r\n1.1.1.0,1.1.1.x,AU\r\n",
    )
    assert table.country("8.8.8.8") == "US"  # lower case read as upper
    assert table.country("9.9.9.9") == ""  # a code that is not two letters
    assert table.skipped_lines == 4  # the header, the junk, start > end, a bad address


def test_a_gzipped_file_and_a_directory_of_them(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "countries.csv.gz", "wt") as out:
        out.write("8.8.8.0,8.8.8.255,US\n")
    assert data_files([tmp_path]) == [tmp_path / "countries.csv.gz"]
    assert CountryTable.from_files(data_files([tmp_path])).country("8.8.8.8") == "US"


def test_a_directory_with_num_files_reads_those_alone(tmp_path: Path) -> None:
    (tmp_path / "x-ipv4-num.csv").write_text(f"{8 << 24},{(9 << 24) - 1},US\n")
    (tmp_path / "x-ipv4.csv").write_text("8.0.0.0,8.255.255.255,FR\n")
    assert data_files([tmp_path]) == [tmp_path / "x-ipv4-num.csv"]
    assert load_countries(str(tmp_path))("8.8.8.8") == "US"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        # nested: the inner range wins inside it, the outer one around it
        (["10.1.0.0,10.1.255.255,DE", "10.1.2.0,10.1.2.255,FR"],
         {"10.1.1.255": "DE", "10.1.2.0": "FR", "10.1.2.255": "FR", "10.1.3.0": "DE"}),
        # one start: the shorter wins, whatever order the lines are in
        (["10.1.0.0,10.1.0.255,SK", "10.1.0.0,10.1.7.255,FR"],
         {"10.1.0.255": "SK", "10.1.1.0": "FR", "10.1.8.0": ""}),
        # overlapping: the later start from where it starts
        (["10.1.0.0,10.1.0.99,DE", "10.1.0.50,10.1.0.200,NL"],
         {"10.1.0.49": "DE", "10.1.0.50": "NL", "10.1.0.200": "NL", "10.1.0.201": ""}),
        # three deep, then back out through each
        (["10.1.0.0,10.1.0.255,AT", "10.1.0.10,10.1.0.100,BE", "10.1.0.20,10.1.0.30,CH"],
         {"10.1.0.9": "AT", "10.1.0.10": "BE", "10.1.0.25": "CH", "10.1.0.31": "BE",
          "10.1.0.101": "AT", "10.1.0.255": "AT", "10.1.1.0": ""}),
        # out of order in the file
        (["10.1.0.100,10.1.0.200,IT", "10.1.0.0,10.1.0.9,ES"],
         {"10.1.0.5": "ES", "10.1.0.50": "", "10.1.0.150": "IT"}),
        # adjacent ranges of one country, and the whole address space
        (["0.0.0.0,255.255.255.255,PL", "10.1.0.0,10.1.0.9,PL"],
         {"0.0.0.0": "", "1.2.3.4": "PL", "255.255.255.254": "", "223.255.255.255": "PL"}),
    ],
)  # fmt: skip
def test_ranges_that_nest_or_overlap(
    tmp_path: Path, lines: list[str], expected: dict[str, str]
) -> None:
    # 10.0.0.0/8 is private, cut out of the real data; here its numbers are read as 11.x.
    moved = [ln.replace("10.1.", "11.1.") for ln in lines]
    table = table_of(tmp_path, "c.csv", "\n".join(moved) + "\n")
    assert {ip: table.country(ip.replace("10.1.", "11.1.")) for ip in expected} == expected


def test_numbers_of_both_families_in_a_file_not_named_ipv6(tmp_path: Path) -> None:
    v6_start = int.from_bytes(bytes.fromhex("20014860" + "00" * 12), "big")
    table = table_of(
        tmp_path,
        "mixed-num.csv",
        f"{8 << 24},{(9 << 24) - 1},US\n{v6_start},{v6_start + 2**96 - 1},GB\n",
    )
    assert (table.country("8.8.8.8"), table.country("2001:4860::1")) == ("US", "GB")
