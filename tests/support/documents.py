"""Small documents on distinct topics for vector store tests and benchmarks, and a PDF writer for them."""
from __future__ import annotations

import json

VOLCANOES = ("# Volcanoes\n\nA volcano erupts when molten rock called magma rises from the mantle through cracks "
             "in the crust. Pressure from dissolved gases drives lava, ash and volcanic bombs out of the crater. "
             "Shield volcanoes such as Mauna Loa have gentle slopes built by runny basalt lava flows.")
SOURDOUGH = ("Baking sourdough bread. Feed the starter with flour and water the night before. Mix the levain "
             "into the dough, let it ferment for several hours with stretch and folds, shape the loaf, proof it "
             "in a basket overnight in the fridge, then bake it in a very hot Dutch oven until the crust is dark.")
TIDES = {"topic": "oceans", "text": "Ocean tides are caused by the gravitational pull of the Moon and, to a lesser "
         "degree, the Sun. The sea rises and falls twice each day because the Earth rotates through two bulges "
         "of water: one facing the Moon and one on the opposite side. Spring tides happen at full and new moon."}
CHESS = ("Chess rules in brief. The knight moves in an L shape: two squares in one direction and then one square "
         "at a right angle, and it is the only piece that can jump over others. The bishop moves diagonally, the "
         "rook along ranks and files, and castling moves the king two squares towards a rook.")


def pdf_with_text(lines: list[str]) -> bytes:
    """A one-page PDF whose page shows `lines` in Helvetica (pypdf extracts them back)."""
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream = "BT /F1 10 Tf 40 800 Td 12 TL " + " ".join(f"({escape(line)}) '" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def empty_pdf() -> bytes:
    """A valid PDF with one blank page: nothing to extract."""
    return pdf_with_text([]).replace(b"BT /F1 10 Tf 40 800 Td 12 TL  ET", b"")


def topic_documents() -> dict[str, bytes]:
    """filename -> content: Markdown, text, JSON and PDF, one topic each."""
    words = CHESS.split(" ")
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    return {"volcanoes.md": VOLCANOES.encode(), "sourdough.txt": SOURDOUGH.encode(),
            "tides.json": json.dumps(TIDES).encode(), "chess.pdf": pdf_with_text(lines)}
