// The objects list: colour, name (rename in place), show/hide, delete; a click selects the object.

const hex = (c) => "#" + c.map((v) => v.toString(16).padStart(2, "0")).join("");

export function renderObjects(ul, objects, active, actions) {
  ul.replaceChildren();
  for (const o of objects) {
    const li = document.createElement("li");
    li.className = o.label === active ? "active" : "";
    li.dataset.label = String(o.label);

    const color = document.createElement("input");
    color.type = "color";
    color.value = hex(o.color);
    color.title = "colour";
    color.onchange = () => actions.update(o.label, { color: color.value });

    const name = document.createElement("input");
    name.className = "name";
    name.value = o.name;
    name.title = "rename";
    name.onchange = () => actions.update(o.label, { name: name.value });

    const eye = document.createElement("button");
    eye.textContent = o.visible ? "hide" : "show";
    eye.title = o.visible ? "hide" : "show";
    eye.className = "eye";
    eye.onclick = (e) => {
      e.stopPropagation();
      actions.update(o.label, { visible: !o.visible });
    };

    const del = document.createElement("button");
    del.textContent = "×";
    del.title = "delete object";
    del.className = "delete";
    del.onclick = (e) => {
      e.stopPropagation();
      if (confirm(`Delete ${o.name}?`)) actions.remove(o.label);
    };

    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = String(o.label);
    tag.title = "select (prompts go to the selected object)";
    li.onclick = (e) => {
      if (e.target === li || e.target === tag) actions.select(o.label);
    };
    li.append(tag, color, name, eye, del);
    ul.appendChild(li);
  }
}
