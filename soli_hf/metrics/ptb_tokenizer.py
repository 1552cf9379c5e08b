"""Pure-Python PTB tokenisation matching coco-caption's ``PTBTokenizer``.

coco-caption (``pycocoevalcap.tokenizer.ptbtokenizer``) writes every caption
on its own line, runs the Stanford CoreNLP 3.4.1 ``PTBTokenizer`` over the
file with ``-preserveLines -lowerCase`` and then drops the tokens listed in
:data:`PUNCTUATIONS`.  This module re-implements that pipeline without Java:

* :func:`_scan` emulates the JFlex scanner of ``PTBLexer`` with its default
  options (PTB3 escaping): at every position each rule is tried, the longest
  match wins (a rule's trailing context counts towards its length, as in JFlex)
  and ties go to the earlier rule.  Rule actions may give characters back
  ("push back") or duplicate a sentence-final period, as the lexer does.
* :func:`tokenize_lines` joins the lines with ``\\n`` like coco-caption does,
  so the few rules that look across a line break (an abbreviation such as
  ``etc.`` or ``U.S.`` followed by a capitalised word on the next line) behave
  as in the jar, then lower-cases every token the way Java does (after lexing,
  so ``(`` becomes ``-lrb-`` and survives the punctuation filter).
* :func:`tokenize` / :func:`tokenize_captions` add coco-caption's punctuation
  removal; :func:`tokenize_captions` is the drop-in equivalent of
  ``PTBTokenizer().tokenize``.

The rules were written from the lexer's documented behaviour and checked
against the 3.4.1 jar on all 40,000 Flickr8k captions, 450,000 lines of
English documentation text and 150,000 randomly generated lines (awkward
punctuation, abbreviations, URLs, SGML, quotes, numbers, Unicode): the output
is identical, with the exceptions below.

Known deviations from the jar:

* Line-breaking characters inside a caption other than ``\\n`` (``\\r``,
  U+000B, U+000C, U+2028, U+2029) are read as spaces.  coco-caption only
  replaces ``\\n``, so the jar starts a new output line there and every later
  caption of the call is shifted onto the wrong image.
* Character classes follow Python's Unicode database: the few hundred letters
  and digits added to Unicode after 2010 are word characters here but are
  deleted by the jar.  (Characters outside the Basic Multilingual Plane, e.g.
  emoji, are deleted by both.)
* Final versus medial lower-case sigma follows a re-implementation of Java's
  word-boundary rule that differs when a capital sigma follows a combining
  mark placed on punctuation.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import NamedTuple, TypeVar

__all__ = ["PUNCTUATIONS", "tokenize_captions", "tokenize_lines", "tokenize"]

K = TypeVar("K", bound=Hashable)

#: Tokens coco-caption removes after tokenisation (compared after lower-casing,
#: so the upper-case bracket escapes never match and stay in the output).
PUNCTUATIONS: frozenset[str] = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# --------------------------------------------------------------------------
# Character classes (contents of a [...] class, without the brackets).
# --------------------------------------------------------------------------


def _class_body(predicate: Callable[[str], bool]) -> str:
    """Regex class body listing every BMP character satisfying ``predicate``."""
    parts: list[str] = []
    start = None
    for cp in range(0x10000):
        inside = not (0xD800 <= cp <= 0xDFFF) and predicate(chr(cp))
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            parts.append(_range(start, cp - 1))
            start = None
    if start is not None:
        parts.append(_range(start, 0xFFFF))
    return "".join(parts)


def _range(lo: int, hi: int) -> str:
    return f"\\u{lo:04x}" if lo == hi else f"\\u{lo:04x}-\\u{hi:04x}"


#: JFlex ``[:letter:]`` (Java ``Character.isLetter``) restricted to the BMP.
_L = _class_body(lambda c: unicodedata.category(c).startswith("L"))
#: JFlex ``[:digit:]`` (Java ``Character.isDigit``) plus the N'Ko digits.
_D = _class_body(lambda c: unicodedata.category(c) == "Nd") + "\\u07c0-\\u07c9"
#: JFlex ``[:uppercase:]``.
_UPPER = _class_body(lambda c: unicodedata.category(c) == "Lu")
# The two lists below (non-letters that PTBLexer treats as letters, and symbols
# it keeps as one-character tokens rather than deleting) agree with the jar for
# every BMP character, checked one by one.
#: Combining marks and other characters PTBLexer accepts inside words.
_EXTRA_LETTER = (
    "\\u00ad\\u0237-\\u024f\\u02c2-\\u02c5\\u02d2-\\u02df\\u02e5-\\u02ff\\u0300-\\u036f"
    "\\u0370-\\u037d\\u0384\\u0385\\u03cf\\u03f6\\u03fc-\\u03ff\\u0483-\\u0487\\u04cf"
    "\\u04f6-\\u04ff\\u0510-\\u0525\\u055a-\\u055f\\u0591-\\u05bd\\u05bf\\u05c1\\u05c2"
    "\\u05c4\\u05c5\\u05c7\\u0615-\\u061a\\u063b-\\u063f\\u064b-\\u065e\\u0670"
    "\\u06d6-\\u06ef\\u06fa-\\u06ff\\u070f\\u0711\\u0730-\\u074f\\u0750-\\u077f"
    "\\u07a6-\\u07b1\\u07ca-\\u07f5\\u07fa\\u0900-\\u0903\\u093c\\u093e-\\u094e"
    "\\u0951-\\u0955\\u0962-\\u0963\\u0981-\\u0983\\u09bc-\\u09c4\\u09c7\\u09c8"
    "\\u09cb-\\u09cd\\u09d7\\u09e2\\u09e3\\u0a01-\\u0a03\\u0a3c\\u0a3e-\\u0a4f"
    "\\u0a81-\\u0a83\\u0abc-\\u0acf\\u0b82\\u0bbe-\\u0bc2\\u0bc6-\\u0bc8\\u0bca-\\u0bcd"
    "\\u0c01-\\u0c03\\u0c3e-\\u0c56\\u0d3e-\\u0d44\\u0d46-\\u0d48\\u0e30-\\u0e3a"
    "\\u0e47-\\u0e4e\\u0eb1-\\u0ebc\\u0ec8-\\u0ecd"
)
_SPACE = " \\t\\u00a0\\u2000-\\u200a\\u3000"
_NL = "\\r\\n\\u2028\\u2029\\u000b\\u000c\\u0085"
#: Symbols that are tokens on their own.
_MISC_SYMBOL = (
    "+%&~\\^|\\\\\\u00a6\\u00a7\\u00a8\\u00a9\\u00ac\\u00ae\\u00af\\u00b0-\\u00ba"
    "\\u00d7\\u00f7\\u0387\\u05be\\u05c0\\u05c3\\u05c6\\u05f3\\u05f4\\u0600-\\u0603"
    "\\u0606-\\u060a\\u060c\\u0614\\u061b\\u061e\\u066a\\u066d\\u0703-\\u070d"
    "\\u07f6-\\u07f8\\u0964\\u0965\\u0e4f\\u1fbd\\u2016\\u2017\\u2020-\\u2023"
    "\\u2030-\\u2038\\u203b\\u203e-\\u2042\\u2044\\u207a-\\u207f\\u208a-\\u208e"
    "\\u2100-\\u214f\\u2190-\\u21ff\\u2200-\\u2bff\\u3012\\u30fb\\uff01-\\uff0f"
    "\\uff1a-\\uff20\\uff3b-\\uff40\\uff5b-\\uff65"
)

# --------------------------------------------------------------------------
# Macros (regex fragments).  Literal words are wrapped in (?i:...) because the
# JFlex scanner is %caseless, which never applies inside character classes.
# --------------------------------------------------------------------------

SPACE = f"[{_SPACE}]"
SPACES = f"{SPACE}+"
SPACENL = f"[{_SPACE}{_NL}]"
SPLET = "&[aeiouAEIOU](?i:acute|grave|uml);"
LETTER = f"(?:[{_L}{_EXTRA_LETTER}]|{SPLET})"
DIGIT = f"[{_D}]"
ALNUM = f"[{_L}{_D}]"
WORD = f"{LETTER}(?:{LETTER}|{DIGIT})*(?:[.!?]{LETTER}(?:{LETTER}|{DIGIT})*)*"
APOS = "(?:['\\u0092\\u2019]|(?i:&apos;))"
APOSETC = f"(?:{APOS}|[`\\u0091\\u2018\\u201b])"
REDAUX = f"{APOS}(?:[msdMSD]|(?i:re|ve|ll))"
SWORD = "[A-Za-z\\u00ad]*[A-MO-Za-mo-z]\\u00ad*"
SREDAUX = f"(?i:n){APOSETC}(?i:t)"
# Rules built from the list-valued macros below get one entry per alternative
# (see _rules); string macros are used inside other patterns.
APOWORD = [
    f"{APOS}(?i:n){APOS}?",
    f"[lLdDjJ]{APOS}",
    f"(?i:dunkin){APOS}",
    f"(?i:somethin){APOS}",
    f"(?i:ol){APOS}",
    f"{APOS}(?i:em)",
    f"[A-HJ-XZn]{APOSETC}[{_L}]{{2}}[{_L}]*",
    f"{APOS}[2-9]0(?i:s)",
    f"{APOS}(?i:till?)",
    f"[{_L}]+[aeiouyAEIOUY]{APOSETC}[aeiouA-Z][{_L}]*",
    f"{APOS}(?i:cause)",
    "(?i:cont'd)\\.?",
    "(?i:'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)",
    f"(?i:o){APOSETC}(?i:o)",
]
FULLURL = '(?i:https?)://[^ \\t\\n\\f\\r"<>|(){}]+[^ \\t\\n\\f\\r"<>|.!?(){},-]'
# ",-_" in the second class is a character range (as in the original lexer),
# so upper-case letters, digits, "@", "/" and ":" cannot start such a URL.
LIKELYURL = (
    '(?:(?:(?i:www)\\.(?:[^ \\t\\n\\f\\r"<>|.!?(){},]+\\.)+[a-zA-Z]{2,4})'
    "|(?:(?:[^ \\t\\n\\f\\r\"`'<>|.!?(){},-_$]+\\.)+(?i:com|net|org|edu)))"
    '(?:/[^ \\t\\n\\f\\r"<>|()]+[^ \\t\\n\\f\\r"<>|.!?(){},-])?'
)
EMAIL = (
    '(?:<|(?i:&lt;))?[a-zA-Z0-9][^ \\t\\n\\f\\r"<>|(){}\\u00a0]*@'
    '(?:[^ \\t\\n\\f\\r"<>|(){}.\\u00a0]+\\.)*[^ \\t\\n\\f\\r"<>|(){}.\\u00a0]+'
    "(?:>|(?i:&gt;))?"
)
FILENAME = (
    f"{ALNUM}+(?:\\.{ALNUM}+)*\\.(?i:bat|bmp|c|class|cgi|cpp|dll|docx?|exe|gif|gz|h|html?|jar"
    "|java|jpe?g|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip)"
)
TWITTER = ["@[a-zA-Z_][a-zA-Z_0-9]*", f"#{LETTER}+"]
DATE = f"{DIGIT}{{1,2}}[-/]{DIGIT}{{1,2}}[-/]{DIGIT}{{2,4}}"
NUM = f"{DIGIT}*(?:[.:,\\u00ad\\u066b\\u066c]{DIGIT}+)+|{DIGIT}+"
NUMBER = f"[-+]?(?:{NUM})"
SUBSUPNUM = "[\\u207a\\u207b\\u208a\\u208b]?(?:[\\u2070\\u00b9\\u00b2\\u00b3\\u2074-\\u2079]+|[\\u2080-\\u2089]+)"
FRAC = f"(?:{DIGIT}{{1,4}}[- \\u00a0])?{DIGIT}{{1,4}}(?:\\\\?/|\\u2044){DIGIT}{{1,4}}"
FRAC2 = "[\\u00bc\\u00bd\\u00be\\u2153-\\u215e]"
DOLSIGN = ["[A-Z]*\\$", "#"]
DOLSIGN2 = "[\\u00a2\\u00a3\\u00a4\\u00a5\\u0080\\u20a0\\u20ac\\u060b\\u0e3f\\u20a4\\uffe0\\uffe1\\uffe5\\uffe6]"
HYPHEN = "[-_\\u058a\\u2010\\u2011]"
THING_PART = f"(?:[dDoOlL]{APOSETC}{ALNUM})?{ALNUM}+"
THING = f"{THING_PART}(?:{HYPHEN}{THING_PART})*"
THINGA = "[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+"
THING3 = "[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
ACRO = [
    "[A-Za-z](?:\\.[A-Za-z])+",
    "(?i:(?:canada|sino|korean|eu|japan|non)-u\\.s|u\\.s\\.-(?:u\\.k|u\\.s\\.s\\.r))",
]
# The acronym alternative goes first so that "x-u.s." is not cut after "u".
HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\\u00ad]*(?:-(?:(?:{'|'.join(ACRO)})\\.|[A-Za-z0-9\\u00ad]+))+"
# A single letter counts here (see _acronym_before_sentence).
ACRONYM = ["[A-Za-z](?:\\.[A-Za-z])*\\.", f"{ACRO[1]}\\."]
ABMONTH = "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
ABDAYS = "mon|tue|tues|wed|thu|thurs|fri"
# A capital first letter is required for states that are also common words.
ABSTATE = (
    "(?i:ala|ariz)|A(?i:z|rk)|(?i:calif|colo|conn|ct|dak)|D(?i:el)|(?i:fla|ga)|I(?i:ll)"
    "|(?i:ind|kans?|ky)|L(?i:a)|M(?i:ass)|(?i:md|mich|minn)|M(?i:iss)|(?i:mo|mont|neb|nev|okla)"
    "|O(?i:re)|P(?i:a)|(?i:penn|tenn)|T(?i:ex)|(?i:va|vt)|W(?i:ash)|(?i:wisc?|wyo)"
)
# Lower-case "y"/"e" only: "Pty." and "pty." but not "PTY.".
ABCOMP = "(?i:inc|cos?|corp)|(?i:pp?t)[ye](?i:s?)|(?i:ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys)"
ABNUM = "tel|est|ext|sq"
ABPTIT = "jr|sr|bros|(?:ed|ph)\\.d|blvd|rd|esq"
ABBREV1 = f"(?:(?i:{ABMONTH}|{ABDAYS})|{ABSTATE}|{ABCOMP}|(?i:{ABNUM}|{ABPTIT}|etc|al|seq|bldg))\\."
ABTITLE = (
    "(?i:mr|mrs|ms)|M(?i:iss)|(?i:drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?"
    "|adm|rev|maj|sgt|cpl|pvt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det"
    "|mt|ft|adj|adv|asst|assoc|ens|insp|mlle|mme|msgr|sfc)"
)
ABBREV4 = [
    "[A-Za-z]",
    ABTITLE,
    "(?i:vs|alex|wm|jos|cie|a\\.k\\.a|cf|treas|ph)",
    *ACRO,
    "(?i:invt|elec|natl|dept)|(?i:m)[ft](?i:g)",
]
ABBREV2 = [f"(?:{abbrev})\\." for abbrev in ABBREV4]
ABBREV3 = "(?i:ca|figs?|prop|nos?|art|pp|op)\\."
PTY = "(?:(?i:pt)[eyEY]|(?i:co))\\."
_SGML_NAME = "[A-Za-z][A-Za-z0-9_:.-]*"
SGML = (
    "<(?:[!?][A-Za-z-][^>\\r\\n]*"
    f"|{_SGML_NAME}(?: +{_SGML_NAME}(?: *= *(?:'[^'\\r\\n]*'|\"[^\"\\r\\n]*\"))?)* */?"
    f"|/{_SGML_NAME}) *>"
)
PHONE = [
    "(?:\\([0-9]{2,3}\\)[ \\u00a0]?|(?:\\+\\+?)?(?:[0-9]{2,4}[- \\u00a0])?[0-9]{2,4}[- \\u00a0])"
    "[0-9]{3,4}[- \\u00a0]?[0-9]{3,5}",
    "(?:(?:\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5}",
]
LDOTS = ["\\.{3,5}", "(?:\\.[ \\u00a0]){2,4}\\.", "[\\u0085\\u2026]"]
INSENTP = "[,;:\\u3001]"
QUOTES = [
    APOS,
    "''",
    "[`\\u2018\\u2019\\u201a\\u201b\\u201c\\u201d\\u0091\\u0092\\u0093\\u0094"
    "\\u201e\\u201f\\u2039\\u203a\\u00ab\\u00bb]{1,2}",
]
DBLQUOT = ['"', "(?i:&quot;)"]
TBSPEC = [
    "(?i:-(?:rrb|lrb|rcb|lcb|rsb|lsb)-|c\\.d\\.s|pro-|anti-|s(?:&|&amp;)p-500|s(?:&|&amp;)ls)",
    f"(?i:cap){APOS}(?i:n)",
    f"(?i:c){APOS}(?i:est)",
]
TBSPEC2 = f"{APOS}[0-9][0-9]"
SMILEY = "[<>]?[:;=][-o*']?[()DPdpO\\\\{@|\\[\\]]"
ASIANSMILEY = [
    "[\\^x=~<>]\\.\\[\\^x=~<>]",
    "[-\\^x=~<>']_[-\\^x=~<>']",
    "\\([-\\^x=~<>'][_.]?[-\\^x=~<>']\\)",
    "\\([\\^x=~<>']-[\\^x=~<>'`]\\)",
]
_AFTER_ACRONYM = (
    "About|According|Additionally|After|An|A|As|At|But|Earlier|He|Her|Here|However|If|In|It"
    "|Last|Many|More|Mr\\.|Ms\\.|Now|Once|One|Other|Our|She|Since|So|Some|Such|That|The"
    "|Then|There|These|They|This|We|When|While|What|Yet|You"
)


def _after_acronym() -> str:
    """Words that make a preceding acronym sentence-final (first letter case-sensitive)."""
    return "|".join(f"{w[0]}(?i:{w[1:]})" if len(w) > 1 else w for w in _AFTER_ACRONYM.split("|"))


# --------------------------------------------------------------------------
# Token normalisations used by rule actions.
# --------------------------------------------------------------------------

_LEFT_SINGLE = re.compile("[\\u0091\\u2018\\u201b\\u2039]")
_RIGHT_SINGLE = re.compile("[\\u0092\\u2019\\u203a]")
_LEFT_DOUBLE = re.compile("[\\u0093\\u201c\\u00ab]")
_RIGHT_DOUBLE = re.compile("[\\u0094\\u201d\\u00bb]")
_ASCII_SINGLE = re.compile("(?:&apos;|')")
_ASCII_DOUBLE = re.compile('(?:"|&quot;)')
_CURRENCY = re.compile("[\\u0080\\u00a4\\u20a0\\u20ac]")
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}


def _latex_quotes(tok: str, left: bool) -> str:
    """PTB3 ("LaTeX") quotes: `` ` '' ' chosen by ``left`` for ambiguous ASCII quotes."""
    tok = _ASCII_SINGLE.sub("`" if left else "'", tok)
    tok = _ASCII_DOUBLE.sub("``" if left else "''", tok)
    tok = _LEFT_SINGLE.sub("`", tok)
    tok = _RIGHT_SINGLE.sub("'", tok)
    tok = _LEFT_DOUBLE.sub("``", tok)
    return _RIGHT_DOUBLE.sub("''", tok)


def _currency(tok: str) -> str:
    tok = tok.replace("\u00a2", "cents").replace("\u00a3", "#")
    return _CURRENCY.sub("$", tok)


def _fractions(tok: str) -> str:
    return "".join(_FRACTIONS.get(ch, ch) for ch in tok)


def _parens(tok: str) -> str:
    return tok.replace("(", "-LRB-").replace(")", "-RRB-")


def _no_soft_hyphen(tok: str) -> str:
    return tok.replace("\u00ad", "") or "-"


def _nbsp(tok: str) -> str:
    return tok.replace(" ", "\u00a0")


# --------------------------------------------------------------------------
# Rules.  An action maps the matched body to (tokens, characters consumed).
# --------------------------------------------------------------------------

Action = Callable[[str], "tuple[tuple[str, ...], int]"]

#: Marker yielded by the scanner for a line break.
NEWLINE = "\n"


class _Rule(NamedTuple):
    """One lexer rule: ``body`` (then ``context``, which is matched but not consumed)."""

    name: str
    body: str
    action: Action
    context: str = ""


def _emit(transform: Callable[[str], str] = str) -> Action:
    """Emit the (transformed) body and consume it."""
    return lambda body: ((transform(body),), len(body))


def _const(token: str) -> Action:
    return lambda body: ((token,), len(body))


def _skip(body: str) -> tuple[tuple[str, ...], int]:
    return (), len(body)


def _pushback(n: int) -> Action:
    """Emit the body minus its last ``n`` characters, which are scanned again."""
    return lambda body: ((body[:-n],), len(body) - n)


def _with_period_again(body: str) -> tuple[tuple[str, ...], int]:
    """Emit an abbreviation with its period and scan the period again."""
    return (body,), len(body) - 1


def _acronym_before_sentence(body: str) -> tuple[tuple[str, ...], int]:
    """An acronym ending a sentence keeps its period and the period is scanned again;
    a lone letter ("I.") gives the letter, then the period."""
    if len(body) == 2:
        return (body[0],), 1
    return (body,), len(body) - 1


def _quotes(left: bool) -> Action:
    return lambda body: ((_latex_quotes(body, left),), len(body))


def _hyphens(body: str) -> tuple[tuple[str, ...], int]:
    return (("--" if 3 <= len(body) <= 4 else body),), len(body)


def _newline(body: str) -> tuple[tuple[str, ...], int]:
    return (NEWLINE,), len(body)


def _amp(tok: str) -> str:
    return re.sub("(?i)&amp;", "&", tok)


def _rules() -> list[_Rule]:
    """PTBLexer's rules in priority order (earlier wins a tie on length).

    A JFlex rule ``a|b|c`` is listed as one rule per alternative: the scanner
    keeps the longest match over all rules anyway, whereas Python's regex
    engine would stop at the first alternative that matches.
    """
    alternatives: list[tuple[str, Sequence[str], Action, str]] = [
        ("PROG_LANGS", ["(?i:c)[+][+]", "(?i:[cf])#"], _emit(), ""),
        ("ASSIMILATIONS3", ["(?i:cannot|'twas)"], _pushback(3), ""),
        ("ASSIMILATIONS2", [f"{APOS}(?i:tis)", "(?i:gonna|gotta|lemme|gimme|wanna)"], _pushback(2), ""),
        ("SGML", [SGML], _emit(_nbsp), ""),
        ("SPMDASH", ["&(?i:md|mdash|ndash);", "[\\u0096\\u0097\\u2013\\u2014\\u2015]"], _const("--"), ""),
        ("SPAMP", ["(?i:&amp;)"], _const("&"), ""),
        ("SPPUNC", ["&(?i:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);"], _emit(), ""),
        ("WORD/REDAUX", [WORD], _emit(_no_soft_hyphen), REDAUX),
        ("SWORD/SREDAUX", [SWORD], _emit(_no_soft_hyphen), SREDAUX),
        ("WORD", [WORD], _emit(_no_soft_hyphen), ""),
        ("APOWORD", APOWORD, _emit(), ""),
        ("APOWORD2", [f"(?i:y){APOS}"], _emit(), f"[{_L}]"),
        ("FULLURL", [FULLURL], _emit(), ""),
        ("LIKELYURL", [LIKELYURL], _emit(), ""),
        ("EMAIL", [EMAIL], _emit(), ""),
        ("TWITTER", TWITTER, _emit(), ""),
        ("REDAUX/", [REDAUX], _quotes(False), "[^A-Za-z]"),
        ("SREDAUX", [SREDAUX], _quotes(False), ""),
        ("DATE", [DATE], _emit(), ""),
        ("NUMBER", [NUMBER], _emit(_no_soft_hyphen), ""),
        ("SUBSUPNUM", [SUBSUPNUM], _emit(), ""),
        ("FRAC", [FRAC], _emit(_nbsp), ""),
        ("FRAC2", [FRAC2], _emit(_fractions), ""),
        ("TBSPEC", TBSPEC, _emit(_amp), ""),
        ("THING3", [THING3], _emit(), ""),
        ("DOLSIGN", DOLSIGN, _emit(), ""),
        ("DOLSIGN2", [DOLSIGN2], _emit(_currency), ""),
        ("ACRONYM/", ACRONYM, _acronym_before_sentence, f"{SPACENL}+(?:{_after_acronym()}|{SGML}){SPACENL}"),
        ("ABBREV3/", [ABBREV3], _emit(), f"{SPACENL}?{DIGIT}"),
        ("PTY/", [PTY], _emit(), f"{SPACE}(?i:ltd|lim)"),
        ("ABBREV1/SENTEND", [ABBREV1], _with_period_again, f"{SPACENL}(?:{SPACENL}|[{_UPPER}]|{SGML})"),
        ("ABBREV1/..", [ABBREV1], _emit(), "(?s:..)"),
        ("ABBREV1", [ABBREV1], _with_period_again, ""),
        ("ABBREV2", ABBREV2, _emit(), ""),
        ("ABBREV4/", ABBREV4, _emit(), SPACE),
        ("ACRO/", ACRO, _emit(), SPACENL),
        ("TBSPEC2/", [TBSPEC2], _emit(), SPACENL),
        ("FILENAME/", [FILENAME], _emit(), f"{SPACENL}|[.?!,]"),
        ("WORD./INSENTP", [f"{WORD}\\."], _emit(_no_soft_hyphen), INSENTP),
        ("PHONE", PHONE, _emit(lambda t: _parens(_nbsp(t))), ""),
        ("DBLQUOT/", DBLQUOT, _quotes(True), "[A-Za-z0-9$]"),
        ("DBLQUOT", DBLQUOT, _quotes(False), ""),
        ("DEL", ["\\x7f"], _skip, ""),
        ("LESSTHAN", ["<", "(?i:&lt;)"], _const("<"), ""),
        ("GREATERTHAN", [">", "(?i:&gt;)"], _const(">"), ""),
        ("SMILEY", [SMILEY], _emit(_parens), "[^A-Za-z0-9]"),
        ("ASIANSMILEY", ASIANSMILEY, _emit(_parens), ""),
        ("LCB", ["\\{"], _const("-LCB-"), ""),
        ("RCB", ["\\}"], _const("-RCB-"), ""),
        ("LSB", ["\\["], _const("-LSB-"), ""),
        ("RSB", ["\\]"], _const("-RSB-"), ""),
        ("LRB", ["\\("], _const("-LRB-"), ""),
        ("RRB", ["\\)"], _const("-RRB-"), ""),
        ("HYPHENS", ["-+"], _hyphens, ""),
        ("LDOTS", LDOTS, _const("..."), ""),
        ("FNMARKS", ["@+", "#+", "_+"], _emit(), ""),
        ("ASTS", ["\\*+", "(?:\\\\\\*){1,3}"], _emit(), ""),
        ("INSENTP", [INSENTP], _emit(), ""),
        ("QUESTION", ["[?!]+"], _emit(), ""),
        ("PERIOD", ["[.\\u00a1\\u00bf\\u037e\\u0589\\u061f\\u06d4\\u0700-\\u0702\\u07fa\\u3002]"], _emit(), ""),
        ("EQUALS", ["="], _emit(), ""),
        ("SLASH", ["/"], _emit(), ""),
        ("HTHING./INSENTP", [f"{HTHING}\\."], _emit(_no_soft_hyphen), INSENTP),
        ("HTHING", [HTHING], _emit(_no_soft_hyphen), ""),
        ("THING./INSENTP", [f"{THING}\\."], _emit(), INSENTP),
        ("THING", [THING], _emit(), ""),
        ("THINGA./INSENTP", [f"{THINGA}\\."], _emit(_amp), INSENTP),
        ("THINGA", [THINGA], _emit(_amp), ""),
        ("LEFTQUOTE/", ["'"], _quotes(True), "[A-Za-z][^ \\t\\n\\r\\u00a0]"),
        ("REDAUX", [REDAUX], _quotes(False), ""),
        ("QUOTES", QUOTES, _quotes(False), ""),
        ("FAKEDUCKFEET", ["<<", ">>"], _emit(), ""),
        ("MISCSYMBOL", [f"[{_MISC_SYMBOL}]"], _emit(), ""),
        ("BLANK", ["\\x00", SPACES, "[\\u200b\\u200e\\u200f\\ufeff]"], _skip, ""),
        ("NEWLINE", ["\\r?\\n", "[\\r\\u2028\\u2029\\u000b\\u000c\\u0085]"], _newline, ""),
        ("NBSP", ["(?i:&nbsp;)"], _skip, ""),
    ]
    return [_Rule(name, body, action, context) for name, bodies, action, context in alternatives for body in bodies]


_RULES = _rules()


def _compile(rules: Sequence[_Rule]) -> re.Pattern[str]:
    """One regex trying every rule at the same position (one optional lookahead each).

    Rule ``i`` captures its body as group ``b{i}``; the empty group ``e{i}``
    marks where its trailing context ends, i.e. the length JFlex compares.
    """
    return re.compile(
        "".join(f"(?:(?=(?P<b{i}>{rule.body})(?:{rule.context})(?P<e{i}>))|)" for i, rule in enumerate(rules))
    )


_ALL_RULES = _compile(_RULES)
_BODY_GROUPS = [_ALL_RULES.groupindex[f"b{i}"] for i in range(len(_RULES))]
_END_GROUPS = [_ALL_RULES.groupindex[f"e{i}"] for i in range(len(_RULES))]
#: Shortcut for the common case: a run of blanks, line breaks, and ASCII words,
#: commas or periods each followed by a blank.  Only the blank rule can start at
#: a space or tab (and it takes the following non-breaking spaces too; a URL may
#: start at one that is not preceded by a blank); such a word is a token of its
#: own unless an assimilation rule splits it; such a comma or period is one too,
#: unless it starts a spaced ellipsis.
_PLAIN_RUN = re.compile(
    f"(?:[ \\t][{_SPACE}]*|\\n"
    "|(?!(?i:cannot|gonna|gotta|lemme|gimme|wanna)(?=[ \\t\\n]|\\Z))[A-Za-z]+(?=[ \\t\\n]|\\Z)"
    "|,(?=[ \\t\\n]|\\Z)|\\.(?=[\\t\\n]|\\Z| (?!\\.)))+"
)
_OTHER_LINE_BREAKS = re.compile("[\\r\\u2028\\u2029\\u000b\\u000c]")


def _longest_rule(text: str, pos: int) -> tuple[int, str] | None:
    """Index and body of the rule with the longest match at ``pos`` (ties: earliest)."""
    regs = _ALL_RULES.match(text, pos).regs
    ends = [regs[g][1] for g in _END_GROUPS]
    longest = max(ends)
    if longest <= pos:
        return None
    index = ends.index(longest)
    start, stop = regs[_BODY_GROUPS[index]]
    return index, text[start:stop]


def _plain_tokens(run: str) -> Iterator[str]:
    """Tokens of a run matched by :data:`_PLAIN_RUN`."""
    for index, line in enumerate(run.split("\n")):
        if index:
            yield NEWLINE
        yield from line.split()


def _scan(text: str) -> Iterator[str]:
    """Yield PTBLexer's tokens for ``text`` (original case); line breaks yield :data:`NEWLINE`."""
    pos, end = 0, len(text)
    while pos < end:
        plain = _PLAIN_RUN.match(text, pos)
        if plain is not None:
            yield from _plain_tokens(plain.group())
            pos = plain.end()
            continue
        found = _longest_rule(text, pos)
        if found is None:  # untokenizable character: the lexer deletes it
            pos += 1
            continue
        index, body = found
        tokens, consumed = _RULES[index].action(body)
        yield from tokens
        pos += consumed


def _is_cased(ch: str) -> bool:
    return unicodedata.category(ch) in ("Lu", "Ll", "Lt")


@lru_cache(maxsize=1)
def _jdk_word_regex() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Ignorable characters and words of Java's word BreakIterator (JDK rules).

    Words are letters joined by dashes, "_", quotes or periods, mixed with digit
    groups; CJK characters are words of their own; marks and format characters
    are transparent.  Built on first use: only tokens with a capital sigma need it.
    """
    ignored = _class_body(lambda c: unicodedata.category(c) in ("Mn", "Me", "Cf"))
    let = _class_body(
        lambda c: (
            (unicodedata.category(c).startswith("L") or unicodedata.category(c) == "Mc")
            and not ("\u3041" <= c <= "\u30fe" or "\u4e00" <= c <= "\u9fa5" or "\uf900" <= c <= "\ufa2d")
        )
    )
    digit = _class_body(lambda c: unicodedata.category(c).startswith("N"))
    mid_word = _class_body(lambda c: unicodedata.category(c) in ("Pd", "Pc")) + "\\u00ad\\u2027\"'."
    number = f"[{digit}]+(?:[\"',\u066b.][{digit}]+)*"
    letters = f"[{let}]+(?:[{mid_word}][{let}]+)*"
    word = f"{letters}[\u0964\u0965]?(?:{number}{letters})*(?:{number}[%&\u00a2\u066a\u2030\u2031]?)?"
    return re.compile(f"[{ignored}]"), re.compile(word)


def _java_lower(token: str) -> str:
    """``String.toLowerCase(Locale.ENGLISH)``: Python's lower-casing, except that a capital
    sigma is final only if its (JDK) word has a cased letter before it and none after."""
    if "\u03a3" not in token:
        return token.lower()
    ignored, word_regex = _jdk_word_regex()
    finals: list[bool] = []
    for word in word_regex.finditer(ignored.sub("", token)):
        text = word.group()
        finals.extend(
            any(map(_is_cased, text[:i])) and not any(map(_is_cased, text[i + 1 :]))
            for i, ch in enumerate(text)
            if ch == "\u03a3"
        )
    chosen = iter(finals)
    return "".join(("\u03c2" if next(chosen) else "\u03c3") if ch == "\u03a3" else ch.lower() for ch in token)


def tokenize_lines(lines: Sequence[str]) -> list[list[str]]:
    """Tokenise each line like CoreNLP 3.4.1 ``PTBTokenizer -preserveLines -lowerCase``.

    Args:
        lines: captions, one per line; ``\\n`` inside a caption is read as a space,
            exactly as coco-caption does before calling the tokenizer.

    Returns:
        For every input line, its lower-cased PTB tokens (punctuation kept).
    """
    if not lines:
        return []
    text = "\n".join(_OTHER_LINE_BREAKS.sub(" ", line.replace("\n", " ")) for line in lines)
    out: list[list[str]] = [[]]
    for token in _scan(text):
        if token == NEWLINE:
            out.append([])
        else:
            out[-1].append(_java_lower(token))
    return out


def _drop_punctuation(tokens: Sequence[str]) -> str:
    """coco-caption's post-processing: space-join and drop :data:`PUNCTUATIONS`."""
    return " ".join(w for w in " ".join(tokens).rstrip().split(" ") if w not in PUNCTUATIONS)


def tokenize(captions: Sequence[str]) -> list[str]:
    """Tokenise captions into coco-caption's space-separated, punctuation-free form."""
    return [_drop_punctuation(tokens) for tokens in tokenize_lines(captions)]


def tokenize_captions(captions: Mapping[K, Sequence[str]]) -> dict[K, list[str]]:
    """Drop-in equivalent of ``pycocoevalcap``'s ``PTBTokenizer().tokenize``.

    Args:
        captions: id -> list of raw caption strings (coco-caption wants
            ``{"caption": str}`` dicts; plain strings are taken here).

    Returns:
        id -> list of tokenised captions, in the input order.
    """
    flat = [caption for caps in captions.values() for caption in caps]
    tokenized = iter(tokenize(flat))
    return {key: [next(tokenized) for _ in caps] for key, caps in captions.items()}
